"""Reading and writing expkit's files.

Result files are written whole or not at all: write a temporary file beside, then rename. YAML is
read with `ConfigLoader`, which refuses a key given twice and reads `1e-3` as a number.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
from pathlib import Path

import yaml

from .errors import ConfigError


# --- YAML --------------------------------------------------------------------------------------------

# YAML 1.1 (PyYAML) reads 1e-3 as a string: a float there needs a dot and a signed exponent
# (1.0e-3). People write learning rates as 1e-3, so any decimal mantissa with an exponent is a float.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3, 1E-3, 1e3 and -2.5e-4 as floats; other strings stay strings."""


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper that quotes a string ConfigLoader would read as a float ('1e5'), so it reads back a string."""


for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def load_yaml_text(text: str):
    """Parse one YAML document with ConfigLoader. A key given twice in one mapping (PyYAML lets the
    last one win silently) raises ConfigError naming its key path and lines; bad YAML raises yaml.YAMLError."""
    loader = ConfigLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # PyYAML composes nested collections recursively
            raise ConfigError(f"the YAML is nested too deep (at most {MAX_YAML_DEPTH} levels)") from None
        if node is None:
            return None
        _refuse_oversized(node)
        _refuse_duplicate_keys(node, [], set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


# A config is a few hundred values; aliases can make a short file expand to billions (an alias bomb),
# which would hang building it, and deep nesting would exhaust Python's recursion.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 100


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_oversized(root) -> None:
    """Count the nodes the document expands to (an alias counts its whole target again) and its depth,
    without recursion; each node is measured once, so a bomb is refused in time linear in the file."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = [k for k in _children(node) if id(k) in size]  # a recursive alias counts once
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(f"the YAML expands to more than {MAX_YAML_NODES} values (through aliases "
                                  "'*name'?): a config is far smaller; refusing to build it")
            if height[key] > MAX_YAML_DEPTH:
                raise ConfigError(f"the YAML is nested too deep (more than {MAX_YAML_DEPTH} levels)")
            continue
        if key in size or key in height:
            continue
        height[key] = 0  # in progress: a recursive alias reaching it again stops here
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in height)


def _refuse_duplicate_keys(node, path: list, seen: set) -> None:
    if id(node) in seen:  # an alias met again (or a recursive one): already checked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = key_node.value
                if key in first:
                    raise ConfigError(
                        f"duplicate key '{key}' on line {key_node.start_mark.line + 1} (first on line "
                        f"{first[key].start_mark.line + 1}): a key may appear once in a mapping; remove one",
                        path=[*path, key])
                first[key] = key_node
                _refuse_duplicate_keys(value_node, [*path, key], seen)
            else:
                _refuse_duplicate_keys(value_node, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, [*path, i], seen)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line, with its line and column when it has them."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} at offset {exc.position} is not allowed in YAML ({exc.reason})"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def _decode(data: bytes, path: Path) -> str:
    """A config file's text; a binary or non-UTF-8 file is one ConfigError, not a UnicodeDecodeError."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError("expected a UTF-8 YAML text file, found UTF-16 text: save it as UTF-8", file=path)
    if b"\0" in data:
        raise ConfigError(f"expected a UTF-8 YAML text file, found binary data (a NUL byte at offset "
                          f"{data.index(0)})", file=path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"expected a UTF-8 YAML text file, found byte 0x{data[exc.start]:02x} on line {line} "
                          "that is not UTF-8: save the file as UTF-8", file=path) from None


def read_yaml_file(path: Path):
    """A YAML file's data; an unreadable, binary or malformed file, or a key given twice, is one ConfigError naming it."""
    path = Path(path)
    try:
        text = _decode(path.read_bytes(), path)
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("expected a YAML file, found a folder", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        return load_yaml_text(text)
    except ConfigError as exc:
        raise exc.with_file(path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {yaml_problem(exc)}", file=path) from None


# --- writing whole files ------------------------------------------------------------------------------


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created as open() creates files: mode 0666 less the umask
    (tempfile.mkstemp would make it 0600 whatever the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


def write_yaml_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, yaml.dump(data, Dumper=ConfigDumper, sort_keys=False, default_flow_style=None, width=100))


def write_figure_atomic(fig, path: str | Path, **kwargs) -> Path:
    """Save a matplotlib figure atomically (PNG)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    return write_bytes_atomic(path, buf.getvalue())


def read_csv(path: str | Path, expected: str = "") -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV file; a missing or unreadable file is a ConfigError naming it."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise ConfigError("file not found" + (f"; expected {expected}" if expected else ""), file=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read as CSV: {exc}", file=path) from None
