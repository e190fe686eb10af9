"""The user's own code, named in a config as "module:attribute" (`my_callbacks:Warmup`).

A module is looked for beside the config file first (the file `repro.config_source` names, in this
process or the worker it started), then on sys.path. Every user module imported this way is noted with
its file, so a run's record can hash the code it ran (`user_modules`). A module that cannot be imported,
or lacks the attribute, is a ConfigError naming the key path and the module: one line, exit 2.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path

from .errors import ConfigError, first_line
from .registry import did_you_mean

# The config file the runs of this process were read from; set by repro.config_source, inherited by
# the worker processes a sweep starts, so they find the modules beside it too.
CONFIG_FILE_ENV = "EXPKIT_CONFIG_FILE"

_imported: dict[str, str] = {}  # module name -> its file, for each user module a reference imported


def is_reference(name) -> bool:
    """Whether a name in a config is a "module:attribute" reference rather than a Keras name."""
    return isinstance(name, str) and ":" in name


def config_folder() -> Path | None:
    path = os.environ.get(CONFIG_FILE_ENV)
    return Path(path).resolve().parent if path else None


def import_module(name: str, path=None):
    """The module `name`, imported beside the config file first, then from sys.path."""
    folder = config_folder()
    where = f"beside the config file ({folder}), then on sys.path" if folder else "on sys.path"
    added = folder is not None and str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"no module '{name}' (looked {where})", path=path) from None
        raise ConfigError(f"module '{name}' failed to import: {type(exc).__name__}: {first_line(exc)}",
                          path=path) from None
    except Exception as exc:  # the user's module raised while importing: say which, in one line
        raise ConfigError(f"module '{name}' failed to import: {type(exc).__name__}: {first_line(exc)}",
                          path=path) from None
    finally:
        if added:
            sys.path.remove(str(folder))
    file = getattr(module, "__file__", None)
    if file:
        _imported.setdefault(name, str(Path(file).resolve()))
    return module


def resolve(reference: str, path=None):
    """The object a "module:attribute" reference names (the attribute may be dotted: `mod:Class.make`)."""
    module_name, _, attribute = reference.partition(":")
    if not module_name.strip() or not attribute.strip():
        raise ConfigError(f"'{reference}' is not a 'module:attribute' reference (e.g. my_layers:Residual)", path=path)
    obj = import_module(module_name.strip(), path)
    for part in attribute.strip().split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"module '{module_name}' has no attribute '{attribute}'{did_you_mean(part, names)}",
                              path=path)
        obj = getattr(obj, part)
    return obj


def user_modules() -> list[dict]:
    """[{"module", "path", "sha256"}] of the user modules imported in this process, by name: the code a
    run's record says it ran (a file gone since is listed without a hash)."""
    out = []
    for name in sorted(_imported):
        file = Path(_imported[name])
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError:
            digest = None
        out.append({"module": name, "path": str(file), "sha256": digest})
    return out

