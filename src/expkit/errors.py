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
