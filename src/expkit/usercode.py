"""The user's own code, named in a config as "module:attribute" (`my_callbacks:Warmup`).

A module is looked for beside the config file first (the file `repro.config_source` names, in this
process or the worker it started), then on sys.path. Every user module imported this way is noted with
its file, so a run's record can hash the code it ran (`user_modules`). A module that cannot be imported,
or lacks the attribute, is a ConfigError naming the key path and the module: one line, exit 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

from .errors import ConfigError, first_line
from .registry import did_you_mean

# The config file the runs of this process were read from; set by repro.config_source, inherited by
# the worker processes a sweep starts, so they find the modules beside it too.
CONFIG_FILE_ENV = "EXPKIT_CONFIG_FILE"
# More folders to look in (os.pathsep-separated) after the config's: where a resumed run's modules were
# found the first time (its record's user_code), since its config.yaml now lives in the run folder.
SEARCH_ENV = "EXPKIT_USER_CODE_PATH"

_imported: dict[str, str] = {}  # module name -> its file, for each user module a reference imported
_loaded: dict[str, object] = {}  # module name -> the module object its classes were registered from


def is_reference(name) -> bool:
    """Whether a name in a config is a "module:attribute" reference rather than a Keras name."""
    return isinstance(name, str) and ":" in name


@contextlib.contextmanager
def searched_in(folders: list[str]):
    """Inside this block (and in the worker processes started in it) modules are also looked for in `folders`."""
    old = os.environ.get(SEARCH_ENV)
    if folders:
        os.environ[SEARCH_ENV] = os.pathsep.join(dict.fromkeys([*folders, *(old.split(os.pathsep) if old else [])]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(SEARCH_ENV, None)
        else:
            os.environ[SEARCH_ENV] = old


def search_folders() -> list[str]:
    """The folders looked in before sys.path: the config file's, then SEARCH_ENV's."""
    config = os.environ.get(CONFIG_FILE_ENV)
    folders = [str(Path(config).resolve().parent)] if config else []
    folders += [f for f in os.environ.get(SEARCH_ENV, "").split(os.pathsep) if f and f not in folders]
    return folders


def import_module(name: str, path=None):
    """The module `name`, imported beside the config file first, then from sys.path. The Keras classes
    it defines are registered for Keras' saving, so a model.keras holding them loads again."""
    folders = search_folders()
    where = f"in {', '.join(folders)}, then on sys.path" if folders else "on sys.path"
    added = [f for f in folders if f not in sys.path]
    sys.path[:0] = added
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
        for folder in added:
            sys.path.remove(folder)
    file = getattr(module, "__file__", None)
    if file and _loaded.get(name) is not module:  # new, or imported afresh (another folder's module of that name)
        _loaded[name] = module
        _imported[name] = str(Path(file).resolve())
        _register_keras_classes(module)
    return module


def _register_keras_classes(module) -> None:
    """Register the module's own Keras classes (layers, losses, metrics...) under the module's name,
    unless the user registered them: Keras' loader finds only registered classes outside keras."""
    keras = sys.modules.get("keras")
    if keras is None:  # the module defines no Keras class without importing Keras
        return
    saveable = getattr(getattr(getattr(keras, "src", None), "saving", None), "keras_saveable", None)
    base = getattr(saveable, "KerasSaveable", None) or keras.layers.Layer
    for attr, obj in list(vars(module).items()):
        keras_class = isinstance(obj, type) and issubclass(obj, base) and hasattr(obj, "get_config")
        function = inspect.isfunction(obj)  # a loss or metric function; a factory's registration is harmless
        if ((keras_class or function) and getattr(obj, "__module__", None) == module.__name__
                and keras.saving.get_registered_name(obj) == obj.__name__):
            keras.saving.register_keras_serializable(package=module.__name__, name=attr)(obj)


def keras_object(value, path=None, *, instantiate: bool = True):
    """A Keras name passed through unchanged; a "module:attribute" reference resolved, a class made
    with no arguments (a loss, metric, initializer or regularizer class) when `instantiate`."""
    if not is_reference(value):
        return value
    obj = resolve(value, path)
    if instantiate and isinstance(obj, type):
        try:
            return obj()
        except Exception as exc:
            raise ConfigError(f"{value}() failed: {type(exc).__name__}: {first_line(exc)}", path=path) from None
    return obj


def call_factory(reference: str, args: dict, input_shape: tuple, num_classes: int | None, path=("model", "factory")):
    """model.factory: the user's function called with model.args, plus input_shape and num_classes when
    it takes them; it must return a keras.Model."""
    import keras

    factory = resolve(reference, path)
    if not callable(factory):
        raise ConfigError(f"'{reference}' is a {type(factory).__name__}, not a function", path=path)
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key not in kwargs and (key in params or takes_any):
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{reference}(...) failed: {type(exc).__name__}: {first_line(exc)}", path=path) from None
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{reference} returned a {type(model).__name__}; a factory returns a keras.Model", path=path)
    if not model.built or not model.inputs:
        raise ConfigError(f"{reference} returned a model without an input: start it with keras.Input(shape=input_shape)",
                          path=path)
    return model


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


_REFERENCE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*:\s*[A-Za-z_][\w.]*\s*$")


def referenced_modules(node) -> set[str]:
    """The module names of every "module:attribute" string in a (resolved) config."""
    if isinstance(node, dict):
        return set().union(*(referenced_modules(v) | referenced_modules(k) for k, v in node.items())) if node else set()
    if isinstance(node, list):
        return set().union(*(referenced_modules(v) for v in node)) if node else set()
    match = _REFERENCE.match(node) if isinstance(node, str) else None
    return {match.group(1)} if match else set()


def user_modules(config: dict | None = None) -> list[dict]:
    """[{"module", "path", "sha256"}] of the user modules imported in this process, by name (only those
    `config` names, when given: a process that ran other configs imported theirs too): the code a run's
    record says it ran (a file gone since is listed without a hash)."""
    wanted = referenced_modules(config) if config is not None else None
    out = []
    for name in sorted(_imported):
        if wanted is not None and name not in wanted:
            continue
        file = Path(_imported[name])
        if {"site-packages", "dist-packages"} & set(file.parts):  # a library ("keras.losses:Huber"): versions has it
            continue
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except OSError:
            digest = None
        out.append({"module": name, "path": str(file), "sha256": digest})
    return out

