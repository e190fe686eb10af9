"""Cross-validation in the schema: `sweep.folds: K` (the axis: every trial trained on K splits of the
training set, each fold its own trial, as each seed is) and `data.fold: {index, of}` (the split one run
trains on, which the sweep writes into each trial's config, so a trial's id covers its fold).

The axis sits in `sweep` beside `seeds` because expanding it into runs is the sweep's job; the split a
run uses sits in `data`, because it decides the arrays that run trains and validates on
(`data.dataset.load_dataset` cuts them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from ..errors import ConfigError
from .base import Section


class FoldConfig(Section):
    index: int = Field(ge=0, description="Which fold validates: 0..of-1 (the others train).")
    of: int = Field(ge=2, description="How many folds the training set is cut into (K of K-fold cross-validation).")

    @model_validator(mode="after")
    def _index_in_range(self):
        if self.index >= self.of:
            raise ConfigError(f"must be 0..{self.of - 1} (data.fold.of is {self.of}), found {self.index}",
                              path="data.fold.index")
        return self


def check_folds(cfg) -> None:
    """Cross-checks of `sweep.folds` and `data.fold` against the rest of the config (ExperimentConfig's
    validator): the folds are the validation sets, so nothing else may choose one."""
    data, folds = cfg.data, cfg.sweep.folds if cfg.sweep is not None else None
    if folds is not None:
        if data.fold is not None:
            raise ConfigError("sweep.folds writes data.fold into each trial; remove data.fold", path="data.fold")
        if data.validation_split is not None:
            raise ConfigError(f"sweep.folds={folds} makes the validation sets (one fold each); remove "
                              "data.validation_split",
                              path="data.validation_split")
        if data.limit is not None and folds > data.limit:
            raise ConfigError(f"{folds} folds of data.limit={data.limit} training examples leave a fold empty; "
                              f"at most {data.limit}", path="sweep.folds")
    if data.fold is not None:
        if data.validation_split is not None:
            raise ConfigError("data.fold makes the validation set (that fold); remove data.validation_split",
                              path="data.validation_split")
        if data.limit is not None and data.fold.of > data.limit:
            raise ConfigError(f"{data.fold.of} folds of data.limit={data.limit} training examples leave a fold "
                              f"empty; at most {data.limit}", path="data.fold.of")
