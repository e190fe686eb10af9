"""The trained model (model.keras) and per-epoch checkpoints, so an interrupted run resumes from its
last finished epoch and ends with the numbers an uninterrupted run would have.

`checkpoint.keras` is the model with its optimizer state in Keras' own format, plus two members
expkit adds to the same zip: `expkit-state.json` (the epochs finished, metrics.csv's rows, the fit
seconds, whether training was stopping, the counters of the seed generators that drive dropout,
and the state of early stopping and of a plateau schedule: none of which Keras saves) and, when
early stopping will restore its best epoch and that epoch is not the last, the best weights
(`expkit-best-weights.npz`). One file, written under a temporary name and renamed, so a checkpoint
is always one whole epoch.

Why a resumed run repeats the uninterrupted one: weights, optimizer moments, the step count and
the learning rate come back from the file, the seed generators' counters and the callbacks' state
from expkit-state.json; and the order of the training examples comes from `fit(shuffle=True)`'s
seeded op in Keras' input pipeline, whose seeds depend only on the run's seed (`seed_everything`),
so the resumed process draws the order the uninterrupted one drew (tests/test_checkpoint.py).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import stopping
from .errors import ConfigError, first_line

CHECKPOINT = "checkpoint.keras"
MODEL = "model.keras"
STATE_MEMBER = "expkit-state.json"
BEST_WEIGHTS_MEMBER = "expkit-best-weights.npz"
# Callback attributes that carry state from one epoch to the next.
CALLBACK_STATE = {"EarlyStopping": ("wait", "stopped_epoch", "best", "best_epoch"),
                  "ReduceLROnPlateau": ("wait", "best", "cooldown_counter")}
SEED_STATE = "seed_generator_state"  # the variable name of a keras.random.SeedGenerator's state


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp.keras")  # Keras wants the suffix


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _unsaved(what: str, exc: Exception) -> None:
    """A model Keras cannot save costs the file, not the run: one warning line. (A full disk, an
    OSError, is raised like any other failed write of the run folder.)"""
    detail = " ".join(str(exc).split())[:300]
    print(f"expkit: warning: could not save {what} ({type(exc).__name__}: {detail})", file=sys.stderr)


def save_model(model, folder: str | Path) -> Path | None:
    """`model.keras` in `folder`, whole or not at all."""
    path = Path(folder) / MODEL
    tmp = _temporary(path)
    with stopping.deferred():  # a stop half-way through h5py's writes breaks its object registry
        try:
            model.save(tmp)
            _replace(tmp, path)
        except OSError:
            raise
        except Exception as exc:
            _unsaved(MODEL, exc)
            return None
        finally:
            tmp.unlink(missing_ok=True)
    return path


def seed_variables(model) -> list:
    """The states of the model's seed generators (dropout and other random layers), in model order."""
    return [v for v in model.variables if v.name == SEED_STATE]


def write_checkpoint(model, folder: str | Path, state: dict, best_weights: dict | None = None) -> Path:
    """`best_weights`: {zip member: weights} of early stoppings that will restore an earlier epoch."""
    import numpy as np

    path = Path(folder) / CHECKPOINT
    tmp = _temporary(path)
    with stopping.deferred():  # as in save_model; and the checkpoint then holds the epoch the record says
        try:
            model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr(STATE_MEMBER, json.dumps(state, allow_nan=True))
                for member, weights in (best_weights or {}).items():
                    buf = io.BytesIO()
                    np.savez(buf, *weights)
                    zf.writestr(member, buf.getvalue())
            _replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


WEIGHTS_MEMBER = "model.weights.h5"  # where Keras' .keras format keeps the weights
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The folder's checkpoint, or None when it has none (or one that cannot be read: a warning, and
    the run starts again from its first epoch)."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            state = json.loads(zf.read(STATE_MEMBER))
            with zf.open(WEIGHTS_MEMBER) as fh:  # a whole zip can still hold garbage weights
                if fh.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                    raise ValueError(f"{WEIGHTS_MEMBER} inside is not an HDF5 file (file signature not found)")
        int(state["epoch"]), list(state["history"])
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        print(f"expkit: warning: {path}: unreadable checkpoint ({type(exc).__name__}: {exc}); training starts "
              "again from the first epoch", file=sys.stderr)
        return None
    return Checkpoint(path, state)


def resumable_epoch(folder: str | Path) -> int | None:
    """The epochs a run folder's checkpoint holds, or None without a usable checkpoint."""
    found = read_checkpoint(folder)
    return None if found is None else found.epoch


def remove_checkpoint(folder: str | Path) -> None:
    (Path(folder) / CHECKPOINT).unlink(missing_ok=True)


def _plain(value):
    """A callback's number as JSON (numpy scalars included); None stays None."""
    if value is None:
        return None
    try:
        return float(value) if not isinstance(value, (bool, int)) else value
    except (TypeError, ValueError):
        return None


def restore(model, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's weights, optimizer state and seed-generator counters into the compiled
    `model` (built by the same config, so every variable lines up)."""
    import numpy as np

    model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded into
    with stopping.deferred():  # h5py again, as in save_model
        try:
            model.load_weights(checkpoint.path)
        except ValueError as exc:  # Keras: "A total of N objects could not be loaded"
            raise ConfigError(f"the checkpoint does not match the run's config (was its config.yaml edited to "
                              f"another model?): {first_line(exc)}; restore the config, or start a new run",
                              file=checkpoint.path) from None
    seeds = checkpoint.state.get("seeds") or []
    variables = seed_variables(model)
    if len(seeds) != len(variables):
        raise ConfigError(f"holds {len(seeds)} seed generator states, the model has {len(variables)}: the "
                          "checkpoint does not match the run's config", file=checkpoint.path)
    for variable, value in zip(variables, seeds):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def checkpoint_callback(folder: Path | None, result, callbacks: list, resume: Checkpoint | None):
    """A Keras callback, last in the list: at the start of training it puts back the state of
    `callbacks` a resumed run had (after they reset themselves in their own on_train_begin); after
    each epoch it writes the checkpoint to `folder` (None: it writes nothing)."""
    import keras

    watched = watched_callbacks(callbacks)
    target = {"folder": folder}  # None after a checkpoint Keras could not save: one warning, no more tries

    class Checkpointer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if resume is not None:
                restore_callbacks(watched, resume, self.model)

        def on_epoch_end(self, epoch, logs=None):
            if target["folder"] is None or result.diverged:
                return
            if not checkpoint_epoch(self.model, target["folder"], epoch, result, watched,
                                    bool(self.model.stop_training)):
                target["folder"] = None

    return Checkpointer()


def checkpoint_epoch(model, folder: Path, epoch: int, result, watched: list, stopping: bool) -> bool:
    """Write `folder`'s checkpoint of `model` after `epoch`; False when Keras cannot save this model
    (one warning: the caller stops trying)."""
    state, best = epoch_state(epoch, result, watched, model, stopping)
    try:
        write_checkpoint(model, folder, state, best)
    except OSError:
        raise
    except Exception as exc:
        _unsaved(f"{CHECKPOINT}; this run cannot be resumed", exc)
        return False
    return True


def _entry_key(cb) -> str | None:
    """A train.callbacks entry's key path (train.callbacks.0); None for expkit's own callbacks."""
    entry = getattr(cb, "_expkit_entry", None)
    return None if entry is None else f"train.callbacks.{entry[0]}"


def _where(cb) -> str:
    """How a warning names a train.callbacks entry: `train.callbacks[1] (my_callbacks:Warmup)`."""
    i, name = cb._expkit_entry
    return f"train.callbacks[{i}] ({name})"


def _key(cb) -> str:
    """Where a callback's state sits in expkit-state.json: expkit's own by class name (EarlyStopping), a
    train.callbacks entry by its key path (train.callbacks.0), so two of one class keep apart."""
    return _entry_key(cb) or type(cb).__name__


def _own_state(cb) -> bool:
    """A user's callback that carries its state itself: get_state() -> a JSON-able dict, set_state(dict)."""
    return callable(getattr(cb, "get_state", None)) and callable(getattr(cb, "set_state", None))


def _best_member(cb) -> str:
    key = _entry_key(cb)
    return BEST_WEIGHTS_MEMBER if key is None else BEST_WEIGHTS_MEMBER.replace(".npz", f"-{key}.npz")


def watched_callbacks(callbacks: list) -> list:
    """The callbacks whose state a checkpoint carries: expkit's early stopping and plateau schedule, the
    same Keras classes named in train.callbacks (CALLBACK_STATE), and the user's own callbacks that
    define get_state/set_state."""
    return [cb for cb in callbacks if type(cb).__name__ in CALLBACK_STATE
            or (getattr(cb, "_expkit_user", False) and _own_state(cb))]


def stateless_user_callbacks(callbacks: list) -> list[str]:
    """train.callbacks entries of the user's own classes whose state a checkpoint cannot carry (no
    get_state/set_state): `train.callbacks[1] (my_callbacks:Warmup)`, for the resume warning."""
    return [_where(cb) for cb in callbacks
            if getattr(cb, "_expkit_user", False) and ":" in cb._expkit_entry[1]
            and type(cb).__name__ not in CALLBACK_STATE and not _own_state(cb)]


def restore_callbacks(watched: list, checkpoint: Checkpoint, model) -> None:
    """Put back the state `watched` callbacks had when `checkpoint` was written (call it after they
    reset themselves in their own on_train_begin). `model`: what the callbacks train (its weights are
    the checkpoint's when the best epoch was the last)."""
    import numpy as np

    saved = checkpoint.state.get("callbacks") or {}
    for cb in watched:
        state = saved.get(_key(cb))
        if state is None:
            continue
        if type(cb).__name__ not in CALLBACK_STATE:  # the user's own: get_state's dict, back to set_state
            cb.set_state(state)
            continue
        for attr in CALLBACK_STATE[type(cb).__name__]:
            if attr in state:
                setattr(cb, attr, state[attr])
        if getattr(cb, "restore_best_weights", False) and state.get("best_weights"):
            if state["best_weights"] == "current":
                cb.best_weights = model.get_weights()
            else:
                with zipfile.ZipFile(checkpoint.path) as zf, np.load(io.BytesIO(zf.read(_best_member(cb)))) as npz:
                    cb.best_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]


def epoch_state(epoch: int, result, watched: list, model, stopping: bool) -> tuple[dict, dict]:
    """What a checkpoint written after `epoch` (0-based) holds besides the model: expkit-state.json's
    dict, and {zip member: best weights} of each early stopping that will restore an epoch before this one."""
    import keras

    saved, best = {}, {}
    for cb in watched:
        if type(cb).__name__ not in CALLBACK_STATE:
            state = cb.get_state()
            try:
                json.dumps(state, allow_nan=True)
            except (TypeError, ValueError) as exc:
                if not getattr(cb, "_expkit_warned", False):
                    cb._expkit_warned = True
                    print(f"expkit: warning: {_where(cb)}: get_state() returned what JSON cannot hold "
                          f"({exc}); the checkpoint leaves its state out, so a resumed run starts it afresh",
                          file=sys.stderr)
                continue
            saved[_key(cb)] = state
            continue
        state = {attr: _plain(getattr(cb, attr, None)) for attr in CALLBACK_STATE[type(cb).__name__]}
        if getattr(cb, "restore_best_weights", False) and getattr(cb, "best_weights", None) is not None:
            state["best_weights"] = "current" if cb.best_epoch == epoch else "stored"
            if cb.best_epoch != epoch:
                best[_best_member(cb)] = cb.best_weights
        saved[_key(cb)] = state
    # the backend that trained it: another backend's attempt starts afresh (sweeps.work.resume_point)
    return {"epoch": epoch + 1, "history": result.history, "fit_seconds": result.fit_seconds,
            "stopping": stopping, "callbacks": saved, "backend": keras.backend.backend(),
            "seeds": [np_list(v) for v in seed_variables(model)]}, best


def np_list(variable) -> list:
    import keras

    return keras.ops.convert_to_numpy(variable).tolist()
