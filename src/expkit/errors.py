"""The one error type for a user's mistake: it names the file and the key path."""

from __future__ import annotations


def format_path(parts) -> str:
    """Render key parts as a path: ('model', 'layers', 2, 'dropout') -> model.layers[2].dropout."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class ConfigError(Exception):
    """A mistake the user can fix: bad YAML, unknown key, wrong type, impossible model, missing data.

    The CLI prints it as one line (`file: key.path: message`) and exits with status 2.
    """

    def __init__(self, message: str, *, file: str | None = None, path=None):
        self.message = message
        self.file = str(file) if file is not None else None
        if path is None or isinstance(path, str):
            self.path = path or None
        else:
            self.path = format_path(path) or None
        super().__init__(str(self))

    def with_file(self, file) -> "ConfigError":
        """Return this error naming `file`, unless it already names one."""
        if self.file is not None:
            return self
        return ConfigError(self.message, file=file, path=self.path)

    def __str__(self) -> str:
        head = ": ".join(p for p in (self.file, self.path) if p)
        return f"{head}: {self.message}" if head else self.message


class RunWriteError(Exception):
    """A run folder could not be written mid-run (disk full, permissions changed): one line, exit 1."""


def first_line(exc: BaseException) -> str:
    """The line of an exception's message that says what is wrong: Keras' colour codes and its
    "Exception encountered" banner left out; the exception's type when it has no message."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = lines[1:]
    return lines[0][:300]


# --- across a process boundary ----------------------------------------------------------------------
# A worker process, a Ray task or a JAX child reports a user's mistake or a write failure to the sweep's
# process as plain data (an exception's pickling is not what every transport keeps), and the sweep's
# process raises it again: one format for every executor.


def to_wire(exc: BaseException) -> tuple:
    """A ConfigError or RunWriteError as plain data (`from_wire` raises it again)."""
    if isinstance(exc, ConfigError):
        return ("config", exc.message, exc.file, exc.path, getattr(exc, "number", None))
    return ("write", str(exc), None, None, None)


def from_wire(wire: tuple) -> Exception:
    """The exception `to_wire` described."""
    kind, message, file, path, number = wire
    if kind == "write":
        return RunWriteError(message)
    error = ConfigError(message, file=file, path=path)
    if number is not None:
        error.number = number  # which trial, when several processes check parts of a sweep
    return error
