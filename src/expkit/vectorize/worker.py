"""The child process that trains a sweep's vectorised groups on JAX.

`launch.run_groups` starts it with 'spawn' and KERAS_BACKEND=jax (the sweep's own process may run
TensorFlow, and a process has one Keras backend). For each group it claims the trials nobody holds
and nobody finished (runfolder.Claim, as execute.run_trial does), trains them together, writes each
trial's run folder with the files a one-at-a-time trial writes, and releases the claims. A group
that cannot be one program (program.NotVectorizable) is left untouched for the sweep's own loop.
Before the job it checks the trials the parent hands it (("check", ...) -> ("checked", shapes, error,
gpus): the sweep's process then needs no Keras backend of its own for them). It reports back through a
pipe: ("log", line) while it works, ("finished", [trial ids]) at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

from ..execute import CLAIMS, set_aside
from ..runfolder import (DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, RUNNING, Claim, ClaimLost, Heartbeat,
                         RunFolder, read_status)


def jax_config(cfg):
    """The trial's config as it trains here: on JAX, whatever backend the sweep named."""
    return cfg.model_copy(update={"backend": "jax"}) if "backend" in type(cfg).model_fields else cfg


def data_key(cfg) -> str:
    """What a trial's dataset depends on (as execute.DatasetCache keys it)."""
    return json.dumps([cfg.data.model_dump(mode="json"), cfg.seed, cfg.train.loss])


def dataset_bytes(dataset) -> int:
    return sum(a.nbytes for a in (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val,
                                  dataset.x_test, dataset.y_test) if a is not None)


def load_with_files(cfg) -> tuple:
    """(dataset, the files it was read from) for a trial: what its record's data hash covers."""
    from ..repro import data_files, load_dataset

    dataset = load_dataset(cfg.data, cfg.seed, cfg.train.loss)
    return dataset, data_files(dataset)


class Datasets:
    """The datasets of the trials in hand, each loaded once (or handed over by the parent), with the
    files each was read from."""

    def __init__(self, loaded: dict | None = None):
        self._loaded: dict[str, tuple] = dict(loaded or {})

    def get(self, cfg):
        return self.get_with_files(cfg)[0]

    def get_with_files(self, cfg) -> tuple:
        key = data_key(cfg)
        if key not in self._loaded:
            self._loaded[key] = load_with_files(cfg)
        return self._loaded[key]

    def keep(self, cfgs: list) -> None:
        """Drop the datasets no trial in `cfgs` needs (one chunk's data in memory at a time)."""
        keys = {data_key(c) for c in cfgs}
        self._loaded = {k: d for k, d in self._loaded.items() if k in keys}


class GroupRun:
    """One group: its claims, its chunks, the run folders of its trials."""

    def __init__(self, group: dict, job: dict, datasets: Datasets, device_name: str, say):
        self.label, self.lane, self.trials = group["label"], group["lane"], group["trials"]
        self.job, self.device_name, self.say = job, device_name, say
        self.datasets = datasets
        self.sweep_dir = Path(job["sweep_dir"])
        self.stale_after = job["stale_after"]
        self.claims: dict[str, Claim] = {}

    @property
    def where(self) -> str:
        return f"[vectorised {self.label}" + ("]" if self.lane == "1/1" else f" lane {self.lane}]")

    def head(self, trial) -> str:
        return f"{self.where} {trial.label()} seed={trial.seed} ({trial.id})"

    def claim(self) -> list:
        for t in self.trials:
            path = self.sweep_dir / t.id
            if read_status(path, self.stale_after) in FINISHED:
                continue
            claim = Claim.acquire(self.sweep_dir / CLAIMS, t.id, self.stale_after)
            if claim is None:
                self.say(f"{self.head(t)}: running in another process")
                continue
            if read_status(path, self.stale_after) in FINISHED:  # finished between the look and the claim
                claim.release()
                continue
            self.claims[t.id] = claim
        return [t for t in self.trials if t.id in self.claims]

    def release(self, trials) -> None:
        for t in trials:
            claim = self.claims.pop(t.id, None)
            if claim is not None:
                claim.release()

    def run(self) -> list[str]:
        """Train the claimable trials; returns the ids it finished (done or diverged)."""
        from ..train import eval_batch_size
        from .grouping import chunk, room
        from .trainer import build_member_model, footprint_bytes

        members = self.claim()
        finished: list[str] = []
        try:
            if not members:
                return finished
            datasets = self.datasets
            first = jax_config(members[0].config)
            dataset = datasets.get(first)
            model = build_member_model(first, dataset, self._steps(first, dataset))
            per_seed = dataset_bytes(dataset) if len({t.seed for t in members}) > 1 else 0
            n_eval = (len(dataset.x_val), 0 if dataset.x_test is None else len(dataset.x_test))
            per_trial = footprint_bytes(model, first.train.batch_size, eval_batch_size(first, n_eval)) + per_seed
            del model
            shared, budget, most = dataset_bytes(dataset), self.job["budget_bytes"], self.job["max_size"]
            parts = chunk(members, per_trial, shared, budget, most)
            if len(parts) > 1:
                fits = room(per_trial, shared, budget)
                why = f"sweep.vectorize_max is {most}" if most and most <= fits else f"memory for {fits}"
                self.say(f"{self.where} {len(members)} trials in {len(parts)} programs of at most "
                         f"{max(map(len, parts))} ({why})")
            for k, part in enumerate(parts, 1):
                datasets.keep([t.config for t in part])
                finished += self.run_chunk(part, datasets, k)
            return finished
        finally:
            self.release(members)

    @staticmethod
    def _steps(cfg, dataset) -> int:
        return max(1, -(-len(dataset.x_train) // cfg.train.batch_size))

    def run_chunk(self, trials: list, datasets: Datasets, chunk: int) -> list[str]:
        from ..models import _first_line, summary_text
        from .program import NotVectorizable
        from .trainer import GroupTrainer, Member, build_member_model

        cfgs = [jax_config(t.config) for t in trials]
        seeds = sorted({c.seed for c in cfgs})
        pools = [datasets.get(cfgs[[c.seed for c in cfgs].index(s)]) for s in seeds]
        members = [Member(t, c, seeds.index(c.seed)) for t, c in zip(trials, cfgs)]
        models = [build_member_model(c, pools[m.pool], self._steps(c, pools[m.pool])) for c, m in zip(cfgs, members)]
        try:
            trainer = GroupTrainer(members, models, pools)
        except NotVectorizable as exc:  # Keras wraps it in its own banner: its first line says why
            self.say(f"{self.where} cannot train as one program: {_first_line(exc)}; its trials run "
                     "one at a time")
            self.release(trials)
            return []
        program = {"group": self.label, "lane": self.lane, "chunk": chunk, "trials": len(members),
                   "compile_seconds": round(trainer.compile_seconds, 3)}
        started = [self.open_folder(m, model, datasets.get_with_files(m.cfg), summary_text(model), program)
                   for m, model in zip(members, models)]
        del models
        names = ", ".join(sorted({k for t in trials for k in t.values})) or "seed"
        self.say(f"{self.where} {len(trials)} trials as one JAX program ({names} per trial)")
        try:
            with Heartbeat(lambda: self.beat(started)):
                trainer.fit()
                trainer.test()
        except KeyboardInterrupt:
            self.close(started, INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception as exc:  # a bug or a resource limit: the trials are recorded failed, the sweep retries them
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            self.close(started, FAILED, error)
            self.say(f"{self.where} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return []
        self.close(started, trainer=trainer)
        return [m.trial.id for m, *_ in started if read_status(self.sweep_dir / m.trial.id) in FINISHED]

    def open_folder(self, member, model, data: tuple, summary: str, program: dict):
        """The trial's run folder, written as run_experiment writes it before training."""
        from ..backend import versions
        from ..models import count_params
        from ..repro import data_fingerprint, describe, library_versions

        trial, cfg = member.trial, member.cfg
        path = self.sweep_dir / trial.id
        note = ""
        if path.exists():
            note = f"earlier attempt ({read_status(path, self.stale_after)}) kept in {set_aside(path)}; "
        path.mkdir(parents=True)
        folder = RunFolder(path, self.claims[trial.id])
        total, trainable = count_params(model)
        dataset, files = data
        described = describe(dataset, self.device_name)
        if described["data_sha256"] is None and files:  # loaded by the parent: its files came along
            described["data_sha256"], described["data_files"] = data_fingerprint(files)
        record = folder.new_record(
            cfg.name, seed=cfg.seed, trial={"id": trial.id, "values": trial.values, "seed": trial.seed},
            params=total, trainable_params=trainable, n_train=len(dataset.x_train), n_val=len(dataset.x_val),
            n_test=0 if dataset.x_test is None else len(dataset.x_test), device=self.device_name, backend="jax",
            versions=library_versions(versions()), **described)
        record.extra["vectorized"] = dict(program)  # which program trained it, shared with how many trials
        folder.set_status(RUNNING)
        folder.write_config(cfg.to_dict())
        folder.write_summary(summary)

        def on_epoch(history):
            try:
                folder.write_metrics(history)
                folder.beat()
            except ClaimLost as exc:  # another process took this trial over: it stops here, the rest go on
                member.active, member.view.stop_training, member.lost = False, True, str(exc)

        member.on_epoch = on_epoch
        self.say(f"{self.head(trial)}: {note}training")
        return member, folder, record

    def beat(self, started) -> None:
        for member, folder, _ in started:
            if member.lost is None:
                try:
                    folder.beat()
                except ClaimLost as exc:
                    member.active, member.view.stop_training, member.lost = False, True, str(exc)

    def close(self, started, status: str | None = None, error: str | None = None, trainer=None) -> None:
        """Write every trial's model, metrics, record and final status, as run_experiment does."""
        from ..checkpoint import save_model
        from ..runner import _finish

        for member, folder, record in started:
            if member.lost is not None:
                self.say(f"{self.head(member.trial)}: {member.lost}")
                continue
            final = status or (DIVERGED if member.result.diverged else DONE)
            try:
                if final == DONE and member.cfg.train.save_model:
                    save_model(trainer.model_of(member.index), folder.path)
                _finish(folder, record, member.result, final, error)
            except (OSError, ClaimLost) as exc:
                self.say(f"{self.head(member.trial)}: could not write its run folder: {exc}")
                continue
            best = record.best.get("val_accuracy")
            self.say(f"{self.head(member.trial)}: {final}" + (f", best val_accuracy {best:.4f}" if final == DONE else ""))
            self.release([member.trial])


def check_here(trials: list, numbers: list[int]) -> tuple:
    """The trials' checks and ModelShapes on JAX, where they will train: (trial id -> ModelShape or None,
    None or the first failing trial's (number, message, file, key path), whether JAX sees a GPU)."""
    from dataclasses import replace

    from ..backend import current
    from ..errors import ConfigError
    from ..execute import preflight

    gpus = bool(current().gpus())
    try:
        return preflight([replace(t, config=jax_config(t.config)) for t in trials], numbers=numbers,
                         shapes=True), None, gpus
    except ConfigError as exc:
        return None, (getattr(exc, "number", 0), exc.message, exc.file, exc.path), gpus


def _without_tensorflow() -> None:
    """Keras imports TensorFlow (seconds) in keras.utils.set_random_seed whenever it is installed, only to
    seed it; this process runs JAX alone, so Keras' lazy handle on TensorFlow is told it is absent."""
    try:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    except (ImportError, AttributeError):  # another Keras: it imports TensorFlow, which costs time only
        pass


def worker_main(conn, parent_pid: int, device: str) -> None:
    """The child's entry: start JAX, wait for the job, train each of its groups, report the finished ids."""
    from ..stopping import on_sigterm
    from ..workers import _die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches this process through its parent, once
    signal.signal(signal.SIGTERM, on_sigterm)
    os.dup2(2, 1)  # whatever Keras prints must not reach the parent's standard output (it ends with a path)
    finished: list[str] = []

    def say(line: str) -> None:
        conn.send(("log", line))

    try:
        _die_with_parent(parent_pid)
        from ..backend import activate, current

        activate("jax", device=device)
        _without_tensorflow()
        device_name = current().select_device(device)
        import keras  # noqa: F401  (imported while the parent still looks at the data)

        while True:  # ("check", trials, numbers) while the parent plans; then ("job", job, datasets), or None
            message = conn.recv()
            if message is None:
                return
            if message[0] != "check":
                break
            conn.send(("checked", *check_here(message[1], message[2])))
        _, job, loaded = message
        datasets = Datasets(loaded)
        for group in job["groups"]:
            finished += GroupRun(group, job, datasets, device_name, say).run()
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # stopped, or the parent is gone
        pass
    except Exception as exc:  # reported; the parent's loop trains whatever is left, one at a time
        print(traceback.format_exc(), file=sys.stderr)
        try:
            say(f"vectorised groups stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        except OSError:
            pass
    finally:
        try:
            conn.send(("finished", finished))
            conn.close()
        except OSError:
            pass
    # Every record is written and reported: end here, without JAX's exit-time teardown (a second of
    # clearing caches, during which the parent's SIGTERM would land in an atexit hook).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
