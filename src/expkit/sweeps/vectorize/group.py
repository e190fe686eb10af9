"""The body of a vectorised group (trials.GroupUnit), in whichever process an executor runs it: a worker
of the local pool, a Ray task, this process. Its Keras must run on JAX.

It claims the trials nobody holds and nobody finished (work.claim_trial, as a single trial is claimed),
trains them together, writes each trial's run folder through runner's public API (the files a trial
trained on its own writes), and releases the claims. A group that cannot be one program
(program.NotVectorizable) is left untouched: its trials come back `pending`, for the sweep to train one
at a time.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from ...errors import first_line
from ...runfolder import (DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, PENDING, PRUNED, RUNNING, ClaimLost,
                          Heartbeat, RunFolder, read_status)
from ..procs import MEMORY_SHARE, available_bytes
from ..trials import GroupUnit
from ..work import DatasetCache, TrialOutcome, claim_trial, data_key, open_attempt, resume_point


def jax_config(cfg):
    """The trial's config as it trains here: on JAX, whatever backend the sweep named."""
    return cfg.model_copy(update={"backend": "jax"}) if "backend" in type(cfg).model_fields else cfg


def dataset_bytes(dataset) -> int:
    return sum(a.nbytes for a in (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val,
                                  dataset.x_test, dataset.y_test) if a is not None)


def without_tensorflow() -> None:
    """Keras imports TensorFlow (seconds) in keras.utils.set_random_seed whenever it is installed, only to
    seed it; a process that trains vectorised groups runs JAX alone, so Keras' lazy handle on TensorFlow
    is told it is absent."""
    try:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False
    except (ImportError, AttributeError):  # another Keras: it imports TensorFlow, which costs time only
        pass


def run_group(unit: GroupUnit, sweep_dir: Path, *, device: str, datasets: DatasetCache | None, stale_after: float,
              log) -> list[tuple]:
    """Train the group's claimable trials as one program; (trial, TrialOutcome) for each of its trials."""
    from ...backend import current

    datasets = datasets or DatasetCache()
    for key, loaded in (unit.datasets or {}).items():  # handed over by the sweep's process
        datasets._loaded.setdefault(key, loaded)
    run = GroupRun(unit, Path(sweep_dir), stale_after, datasets, current().select_device(device),
                   lambda line: print(line, file=log))
    return run.run()


class GroupRun:
    """One group: its claims, its chunks, the run folders of its trials."""

    def __init__(self, unit: GroupUnit, sweep_dir: Path, stale_after: float, datasets: DatasetCache, device_name: str,
                 say):
        self.unit, self.trials = unit, unit.trials
        self.sweep_dir, self.stale_after = sweep_dir, stale_after
        self.datasets, self.device_name, self.say = datasets, device_name, say
        self.claims: dict = {}
        self.outcomes: dict[str, TrialOutcome] = {}

    @property
    def where(self) -> str:
        return self.unit.heading()

    def head(self, trial) -> str:
        return f"{self.where} {trial.heading()}"

    def claim(self) -> list:
        for t in self.trials:
            claim, status = claim_trial(t, self.sweep_dir, self.stale_after)
            if claim is not None:
                self.claims[t.id] = (claim, status)
            elif status in FINISHED:
                self.outcomes[t.id] = TrialOutcome(status, False, f"{status}, skipped")
            else:
                self.outcomes[t.id] = TrialOutcome(RUNNING, False, "running in another process")
        return [t for t in self.trials if t.id in self.claims]

    def release(self, trials) -> None:
        for t in trials:
            held = self.claims.pop(t.id, None)
            if held is not None:
                held[0].release()

    def leave(self, trials, why: str) -> None:
        """These trials are not trained here: the sweep trains them one at a time."""
        for t in trials:
            self.outcomes.setdefault(t.id, TrialOutcome(PENDING, False, why))
        self.release(trials)

    def run(self) -> list[tuple]:
        from ...train import eval_batch_size
        from .grouping import chunk, room
        from .trainer import build_member_model, footprint_bytes

        members = self.claim()
        try:
            if members:
                without_tensorflow()
                first = jax_config(members[0].config)
                dataset = self.datasets.get_with_files(first)[0]
                model = build_member_model(first, dataset, self._steps(first, dataset))
                per_seed = dataset_bytes(dataset) if len({data_key(t.config) for t in members}) > 1 else 0
                n_eval = (len(dataset.x_val), 0 if dataset.x_test is None else len(dataset.x_test))
                per_trial = footprint_bytes(model, first.train.batch_size, eval_batch_size(first, n_eval)) + per_seed
                del model
                # a unit planned without knowing where it runs (a Ray task) measures the memory here
                budget = self.unit.budget_bytes or available_bytes() * MEMORY_SHARE
                shared, most = dataset_bytes(dataset), self.unit.max_size
                parts = chunk(members, per_trial, shared, budget, most)
                if len(parts) > 1:
                    fits = room(per_trial, shared, budget)
                    why = f"sweep.vectorize_max is {most}" if most and most <= fits else f"memory for {fits}"
                    self.say(f"{self.where} {len(members)} trials in {len(parts)} programs of at most "
                             f"{max(map(len, parts))} ({why})")
                for k, part in enumerate(parts, 1):
                    self.datasets.keep([t.config for t in part])
                    self.run_chunk(part, k)
        finally:
            self.leave(members, "not trained in its vectorised group; it trains on its own")
        return [(t, self.outcomes[t.id]) for t in self.trials]

    @staticmethod
    def _steps(cfg, dataset) -> int:
        return max(1, -(-len(dataset.x_train) // cfg.train.batch_size))

    def run_chunk(self, trials: list, chunk: int) -> None:
        from .program import NotVectorizable
        from .trainer import GroupTrainer, Member, build_member_model

        cfgs = [jax_config(t.config) for t in trials]
        # a data pool per distinct dataset: one per seed, and per fold with sweep.folds (a fold is data)
        keys = list(dict.fromkeys(data_key(c) for c in cfgs))
        pools = [self.datasets.get_with_files(cfgs[[data_key(c) for c in cfgs].index(k)])[0] for k in keys]
        sizes = {k: (len(p.x_train), len(p.x_val)) for k, p in zip(keys, pools)}
        if len(set(sizes.values())) > 1:
            # folds of a training set K does not divide differ by one example: one program per size
            for size in dict.fromkeys(sizes.values()):
                self.run_chunk([t for t, c in zip(trials, cfgs) if sizes[data_key(c)] == size], chunk)
            return
        members = [Member(t, c, keys.index(data_key(c))) for t, c in zip(trials, cfgs)]
        models = [build_member_model(c, pools[m.pool], self._steps(c, pools[m.pool])) for c, m in zip(cfgs, members)]
        points = {}
        for i, m in enumerate(members):  # an interrupted attempt continues from its checkpoint, as on its own
            points[m.trial.id], models[i] = self.resume(m, models[i], pools[m.pool])
        try:
            trainer = GroupTrainer(members, models, pools)
        except NotVectorizable as exc:  # Keras wraps it in its own banner: its first line says why
            why = f"cannot train as one program: {first_line(exc)}"
            self.say(f"{self.where} {why}; its trials run one at a time")
            self.leave(trials, f"its vectorised group {why}; it trains on its own")
            return
        program = {"group": self.unit.label, "lane": self.unit.lane, "chunk": chunk, "trials": len(members),
                   "compile_seconds": round(trainer.compile_seconds, 3)}
        started = [self.open_folder(m, model, program, points[m.trial.id]) for m, model in zip(members, models)]
        del models
        names = ", ".join(sorted({k for t in trials for k in t.values})) or "seed"
        self.say(f"{self.where} {len(trials)} trials as one JAX program ({names} per trial)")
        try:
            with Heartbeat(lambda: self.beat(started)):
                trainer.fit()
                trainer.test()
        except KeyboardInterrupt:
            self.close(started, INTERRUPTED)
            raise
        except Exception as exc:  # a bug or a resource limit: the trials are recorded failed, the sweep retries them
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            self.close(started, FAILED, error)
            self.say(f"{self.where} failed: {type(exc).__name__}: {first_line(exc)[:200]}")
            return
        self.close(started, trainer=trainer)

    def resume(self, member, model, dataset) -> tuple:
        """(resume_point's answer, the model): the member's model restored from the checkpoint of its
        interrupted attempt, when it has one this attempt can continue; else as built."""
        from ...checkpoint import restore
        from .trainer import build_member_model

        path = self.sweep_dir / member.trial.id
        found, why = resume_point(path, self.claims[member.trial.id][1], "jax")
        if found is None:
            return (None, why), model
        try:
            restore(model, found)
        except Exception as exc:  # written for another model: a fresh start, the attempt set aside
            self.say(f"{self.head(member.trial)}: its checkpoint does not fit its model ({first_line(exc)[:200]})")
            model = build_member_model(member.cfg, dataset, self._steps(member.cfg, dataset))
            return (None, "its checkpoint does not fit its model; "), model
        member.resume = found
        return (found, ""), model

    def open_folder(self, member, model, program: dict, point: tuple):
        """The trial's run folder, written as a trial trained on its own writes it before training."""
        from ...checkpoint import checkpoint_epoch, watched_callbacks
        from ...runner import continue_record, new_record, start_run

        trial, cfg = member.trial, member.cfg
        path = self.sweep_dir / trial.id
        note, resume = open_attempt(path, self.claims[trial.id][1], point=point)
        folder = RunFolder(path, self.claims[trial.id][0])
        dataset, files = self.datasets.get_with_files(cfg)
        record = new_record(folder, cfg, model, dataset, device_name=self.device_name, data_files=files,
                            trial=trial.record())
        # which program trained it, shared with how many trials: its fit_seconds is the program's
        record.extra["vectorized"] = dict(program)
        if resume:
            continue_record(folder, record, member.resume.epoch)
        start_run(folder, cfg, model, resume=resume)
        if cfg.train.checkpoint:
            def on_checkpoint(epoch, trainer):
                if not checkpoint_epoch(trainer.model_of(member.index), folder.path, epoch, member.result,
                                        watched_callbacks(member.callbacks), bool(member.view.stop_training)):
                    member.on_checkpoint = None  # Keras cannot save this model: said once, not retried

            member.on_checkpoint = on_checkpoint

        def on_epoch(history):
            try:
                folder.write_metrics(history)
                folder.beat()
            except ClaimLost as exc:  # another process took this trial over: it stops here, the rest go on
                member.active, member.view.stop_training, member.lost = False, True, str(exc)

        member.on_epoch = on_epoch
        if trial.prune is not None:  # judged against the sweep folder's records, the other lanes' included
            from ..pruning import SweepPruner

            member.prune = SweepPruner(trial.prune, self.sweep_dir, trial.id, cfg.train.epochs).should_stop
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
        """Write every trial's model, metrics, record and final status, as a trial on its own does."""
        from ...checkpoint import save_model
        from ...runner import INTERRUPTED_MESSAGE, finish_run

        for member, folder, record in started:
            trial = member.trial
            if member.lost is not None:
                self.say(f"{self.head(trial)}: {member.lost}")
                self.outcomes[trial.id] = TrialOutcome(RUNNING, False, member.lost)
                continue
            final = status or (DIVERGED if member.result.diverged else PRUNED if member.result.pruned else DONE)
            if trainer is not None and len(trainer.sizes) > 1:  # lanes were dropped: the program's sizes
                record.extra["vectorized"].update(sizes=list(trainer.sizes),
                                                  compile_seconds=round(trainer.compile_seconds, 3))
            try:
                if final == DONE and member.cfg.train.save_model:
                    save_model(trainer.model_of(member.index), folder.path)
                finish_run(folder, record, member.result, final,
                           INTERRUPTED_MESSAGE if final == INTERRUPTED and error is None else error)
            except (OSError, ClaimLost) as exc:
                self.say(f"{self.head(trial)}: could not write its run folder: {exc}")
                self.outcomes[trial.id] = TrialOutcome(read_status(folder.path, self.stale_after), True,
                                                       f"could not write its run folder: {exc}")
                continue
            best = record.best.get("val_accuracy")
            message = (final + (f", best val_accuracy {best:.4f}" if final == DONE else "") if final != PRUNED else
                       f"pruned after epoch {len(member.result.history)} ({trial.prune['type'].replace('_', ' ')} on "
                       f"{trial.prune['metric']}; its lane dropped from the program)")
            self.outcomes[trial.id] = TrialOutcome(final, True, message)
            self.release([trial])
