"""Loading a config: YAML, `extends`, `--set` overrides, validation with key paths in every error.

Flow: YAML file -> `extends` chain merged -> `--set` overrides applied to the raw dict -> validated
against `ExperimentConfig` (defaults filled). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, format_path
from ..files import load_yaml_text, read_yaml_file, yaml_problem
from ..registry import did_you_mean
from .schema import ExperimentConfig, split_key


# --- raw dict operations -------------------------------------------------------------------------


def deep_merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) is replaced by the override."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(raw: dict, key: str, value: Any) -> dict:
    """Return a copy of `raw` with `value` at `key` (a key path, see split_key); missing mappings are created."""
    parts = split_key(key)
    out = copy.deepcopy(raw)
    node: Any = out
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = format_path(parts[:depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ConfigError(f"cannot index with {part}: {format_path(parts[:depth]) or 'config'} is not a list", path=where)
            if part >= len(node):
                raise ConfigError(f"index {part} is out of range (the list has {len(node)} items)", path=where)
        elif not isinstance(node, dict):
            raise ConfigError(f"cannot set '{part}' inside a {type(node).__name__}", path=where)
        if last:
            node[part] = copy.deepcopy(value)
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3); the value is read as YAML, as in a config file (1e-3 is a float)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key = key.strip()
    try:
        return key, load_yaml_text(value) if value.strip() else None
    except ConfigError as exc:  # a duplicate key inside a mapping value
        raise ConfigError(f"--set {key}: {exc.message}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({yaml_problem(exc)})") from None


# --- loading --------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict:
    """Read one YAML mapping; malformed YAML is reported with its line, a repeated key with its key path."""
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, found {type(data).__name__}", file=path)
    return data


def load_raw(path: str | Path) -> dict:
    """The config file with its `extends` chain merged in (bases first, this file on top).

    The chain is followed in a loop, not by recursion, so a long chain is read (or its cycle named)
    without exhausting Python's recursion limit."""
    path = Path(path)
    layers: list[dict] = []
    chain: list[Path] = []
    while True:
        resolved = path.resolve()
        if resolved in chain:
            cycle = " -> ".join(p.name for p in (*chain, resolved))
            raise ConfigError(f"extends cycle: {cycle}", file=path, path="extends")
        chain.append(resolved)
        raw = read_yaml(path)
        raw.pop("$schema", None)  # for editors (json_schema allows it); not part of the experiment
        resolve_weight_files(raw, path.parent)
        base_ref = raw.pop("extends", None)
        layers.append(raw)
        if base_ref is None:
            break
        if not isinstance(base_ref, str):
            raise ConfigError(f"expected a file path (string), found {type(base_ref).__name__}", file=path, path="extends")
        base_path = path.parent / base_ref
        if not base_path.exists():
            raise ConfigError(f"base config '{base_ref}' not found (looked for {base_path})", file=path, path="extends")
        if base_path.is_dir():
            raise ConfigError(f"base config '{base_ref}' is a folder (expected a YAML file)", file=path, path="extends")
        path = base_path
    merged = layers.pop()
    while layers:
        merged.pop("name", None)  # a child is its own experiment, named after its own file
        merged = deep_merge(merged, layers.pop())
    return merged


def resolve_weight_files(raw: dict, folder: Path) -> None:
    """Make the weights files a config names (model.weights, an application's `weights`) absolute, read
    beside that file: each file of an `extends` chain names its own, and the run's config.yaml, read
    from another folder on --resume, still finds them. 'imagenet' (a download) is left as it is."""
    import os

    model = raw.get("model")
    if not isinstance(model, dict):
        return

    def absolute(value):
        if isinstance(value, str) and value and value != "imagenet" and not value.startswith("$"):
            return os.path.abspath(folder / os.path.expanduser(value))
        return value

    if "weights" in model:
        model["weights"] = absolute(model["weights"])
    blocks = model.get("blocks")
    specs = list(model.get("layers") or []) if isinstance(model.get("layers"), list) else []
    if isinstance(blocks, dict):
        specs += [s for b in blocks.values() if isinstance(b, dict) and isinstance(b.get("layers"), list) for s in b["layers"]]
    for spec in specs:
        args = spec.get("application") if isinstance(spec, dict) else None
        if isinstance(args, dict) and "weights" in args:
            args["weights"] = absolute(args["weights"])


def _describe_error(err: dict, model_cls) -> tuple[str, str]:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("function-after", "str", "int", "bool")))]
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, bad = loc[:-1], loc[-1]
        known = _known_keys(model_cls, parent)
        hint = did_you_mean(bad, known) if known else ""
        listing = f" (known: {', '.join(known)})" if known and not hint else ""
        return format_path(loc), f"unknown key{hint}{listing}"
    if kind == "missing":
        return format_path(loc), "required key is missing"
    if kind == "finite_number":
        return format_path(loc), f"expected a finite number, found {err.get('input')} (.inf and .nan are refused)"
    found = err.get("input")
    shown = f"; found {found!r} ({type(found).__name__})" if kind not in ("value_error",) and not isinstance(found, (dict, list)) else ""
    msg = err["msg"].removeprefix("Value error, ")
    return format_path(loc), f"{msg}{shown}"


def _known_keys(model_cls, parent: list) -> list[str]:
    cls = model_cls
    parts = list(parent)
    while parts:
        part = parts.pop(0)
        if isinstance(part, int) or cls is None:
            return []
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _section_class(field.annotation)
        if getattr(field.annotation, "__origin__", None) is dict and parts:
            parts.pop(0)  # a mapping of sections (model.blocks.<name>): its key is the user's name
    return list(cls.model_fields) if cls is not None else []


def _section_class(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def validate(raw: dict, *, file=None) -> ExperimentConfig:
    """Validate a raw (merged, overridden) dict; the first problem is raised as one ConfigError."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        path, message = _describe_error(errors[0], ExperimentConfig)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(message + more, file=file, path=path) from None


def apply_overrides(raw: dict, overrides) -> dict:
    """Apply `--set` strings ('train.epochs=3') or (key, value) pairs to the raw dict, in order."""
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        raw = set_path(raw, key, value)
    return raw


def load_config(path: str | Path, overrides=()) -> ExperimentConfig:
    """Load, merge `extends`, apply overrides (`--set` strings or (key, value) pairs), validate.
    Every error names the file."""
    path = Path(path)
    try:
        raw = load_raw(path)
        raw.setdefault("name", path.stem)
        return validate(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise exc.with_file(path) from None


def json_schema() -> dict:
    """JSON Schema of the config, for editors' autocompletion."""
    schema = ExperimentConfig.model_json_schema()
    schema["properties"]["extends"] = {"type": "string", "description": "Base config file, relative to this one."}
    # editors point a file at the schema with a `$schema` key (load_config ignores it)
    schema["properties"]["$schema"] = {"type": "string", "description": "This schema's address, for editors."}
    # `name` defaults to the file's name; what the schema requires, an `extends` file may inherit instead
    required = [key for key in schema.pop("required", []) if key != "name"]
    if required:
        schema["if"] = {"required": ["extends"]}
        schema["else"] = {"required": required}
    return schema
