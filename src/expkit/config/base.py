"""The base of every config section (shared by the schema's modules)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are refused, types are not coerced, and a float
    must be finite (.inf or .nan would train into a NaN loss or never stop)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
