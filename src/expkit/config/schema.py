"""The config schema: every section as a pydantic model, each field with its default, range and
description; cross-field checks as validators; and the key-path syntax (`split_key`) a sweep's keys use."""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, field_validator, model_validator

from ..backend import default_backend
from ..errors import ConfigError
from ..registry import did_you_mean
from .base import Section
from .folds import FoldConfig, check_folds
from .search import PruneConfig, SearchConfig, check_search

SEED_MAX = 2**32 - 1  # numpy's and Keras' seeds are unsigned 32-bit integers
NAME_MAX = 100        # bytes (UTF-8) of a run name: runs/<name>/ must fit a file name with room to spare


def _seed_in_range(v: int) -> int:
    if not 0 <= v <= SEED_MAX:
        raise ValueError(f"must lie in 0..{SEED_MAX} (0..2**32-1, the seeds numpy and Keras accept), found {v}")
    return v


Seed = Annotated[int, AfterValidator(_seed_in_range), Field(json_schema_extra={"minimum": 0, "maximum": SEED_MAX})]


def refuse_non_finite(value: Any, path) -> None:
    """Free-form values (optimizer, layer and dataset arguments) hold no .inf or .nan either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, found {value}", path=path)
    if isinstance(value, dict):
        for key, item in value.items():
            refuse_non_finite(item, [*path, key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            refuse_non_finite(item, [*path, i])


class DataConfig(Section):
    dataset: str = Field("fashion_mnist_sample", description="Dataset registry name (see `expkit datasets`).")
    path: str | None = Field(None, description="File or folder for the local sources (npz, image_folder, csv_pixels).")
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the dataset's loader.")
    validation_split: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="Fraction of the training set held out for validation; null: the source's own validation "
        "set if it has one, else 0.1.",
    )
    limit: int | None = Field(None, ge=1, description="Keep the first N training examples (after the seeded shuffle).")
    test_limit: int | None = Field(None, ge=1, description="Keep the first N test examples.")
    shuffle: bool = Field(True, description="Shuffle the training set once, with the run's seed, before splitting.")
    scale: bool = Field(True, description="Divide pixel values by 255 to bring them into [0, 1].")
    layout: Literal["image", "flat"] = Field(
        "image", description="image: (height, width, channels), the channel axis added for grayscale; flat: one vector per example."
    )
    labels: Literal["auto", "one_hot", "integer"] = Field(
        "auto", description="Label encoding; auto picks one-hot for categorical_crossentropy, integers otherwise."
    )
    fold: FoldConfig | None = Field(
        None, description="Cross-validation: validate on fold `index` of `of` equal parts of the training set (after "
        "limit and the seeded shuffle), train on the others; sweep.folds sets it in each trial.")

    @field_validator("options")
    @classmethod
    def _finite_options(cls, v):
        refuse_non_finite(v, ["data", "options"])
        return v


OptimizerSpec = Union[str, dict[str, Any]]


class ScheduleConfig(Section):
    type: Literal["exponential", "step", "plateau", "cosine"] = Field(description="Learning-rate schedule kind.")
    decay_rate: float = Field(0.96, gt=0, description="exponential: factor per `decay_epochs` epochs.")
    decay_epochs: float = Field(1.0, gt=0, description="exponential/cosine: epochs per decay period.")
    staircase: bool = Field(False, description="exponential: decay in whole steps of `decay_epochs`.")
    step_epochs: int = Field(10, ge=1, description="step: multiply the rate by `factor` every this many epochs.")
    factor: float = Field(0.5, gt=0, lt=1, description="step/plateau: multiplier applied at each drop.")
    monitor: str = Field("val_loss", description="plateau: metric watched.")
    patience: int = Field(2, ge=0, description="plateau: epochs without improvement before a drop.")
    min_lr: float = Field(0.0, ge=0, description="plateau/cosine: lower bound on the rate.")


class EarlyStoppingConfig(Section):
    monitor: str = Field("val_loss", description="Metric watched.")
    patience: int = Field(3, ge=0, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")
    mode: Literal["auto", "min", "max"] = Field(
        "auto", description="min: lower is better; max: higher is better; auto: max for accuracies, min otherwise.")
    restore_best_weights: bool = Field(True, description="Evaluate the test set with the best epoch's weights.")


class TrainConfig(Section):
    optimizer: OptimizerSpec = Field("sgd", description="Keras optimizer name, or {name: ..., other Keras arguments}.")
    learning_rate: float = Field(0.01, gt=0, description="The optimizer's (initial) learning rate.")
    schedule: ScheduleConfig | None = Field(None, description="Learning-rate schedule; none keeps it constant.")
    loss: str = Field("categorical_crossentropy", description="Keras loss name.")
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"], description="Keras metric names.")
    batch_size: int = Field(32, ge=1, description="Training examples per gradient step.")
    epochs: int = Field(10, ge=1, description="Passes over the training set (fewer when early stopping fires).")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Stop when the monitored metric stops improving; none trains every epoch.")
    shuffle: bool = Field(True, description="Shuffle the training batches every epoch.")
    deterministic: bool = Field(
        False, description="Bit-for-bit repeatable ops (slower): TensorFlow's op determinism; JAX: XLA's "
        "deterministic GPU ops (a CPU already is); PyTorch: torch.use_deterministic_algorithms.")
    inter_op_threads: Union[int, Literal["auto"]] = Field(
        "auto", description="Threads that run independent ops side by side, on TensorFlow and PyTorch (0: the "
        "backend's default); auto: 1 on a CPU-only machine of at most 4 cores, where each op already uses every "
        "core, 0 otherwise. JAX has none (XLA schedules ops itself): auto only.",
    )
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = Field(
        "float32", description="Keras dtype policy; mixed_float16 is for GPUs and uses loss scaling."
    )
    steps_per_execution: Union[int, Literal["auto"]] = Field(
        "auto", description="Batches per compiled call; auto picks from the model's cost per step. 1 is plain Keras."
    )
    validation_batch_size: Union[int, Literal["auto"]] = Field(
        "auto", description="Batch size for validation and test evaluation (forward only, so larger is cheaper "
        "per example and gives the same metrics); auto: max(batch_size, 256).",
    )
    jit_compile: Union[bool, Literal["auto"]] = Field("auto", description="XLA compilation; auto follows Keras' choice.")
    input_pipeline: Literal["auto", "arrays", "tf_data"] = Field(
        "auto", description="arrays: numpy straight into fit, as a plain script does; tf_data: cached, prefetched dataset."
    )
    verbose: Literal["auto", 0, 1, 2] = Field("auto", description="Keras fit verbosity; auto shows the bar on a terminal.")
    save_model: bool = Field(True, description="Save the trained model as model.keras in the run folder (Keras' format, "
                             "keras.saving.load_model reads it).")
    checkpoint: bool = Field(True, description="After every epoch, save checkpoint.keras (model, optimizer and the "
                             "state expkit needs), so an interrupted run resumes from its last finished epoch "
                             "(`expkit run --resume RUN_DIR`; a sweep resumes its interrupted trials). Removed when "
                             "the run finishes.")
    class_weight: Union[Literal["balanced"], dict[Union[int, str], float], None] = Field(
        None, description="Weight of each class in the loss, passed to Keras' fit: balanced (n_samples / (n_classes * "
        "examples of the class), from the training set) or {class: weight}, a class by its index or its name "
        "(classes not named weigh 1). Recorded in results.json.")
    callbacks: list[dict[str, Any]] = Field(
        default_factory=list, description="More Keras callbacks, each {Name: {arguments}}: a name in keras.callbacks "
        "(ReduceLROnPlateau, CSVLogger, ...) or \"module:attribute\" for your own (a module beside the config file, "
        "else on sys.path). They run after expkit's schedule and early stopping. A sweep's trials with callbacks "
        "train one at a time (a vectorised group calls no Keras callback of yours).")
    test_each_epoch: bool = Field(False, description="Evaluate the test split after every epoch: test_loss and "
                                  "test_<metric> columns in metrics.csv and curves.png (none without a test split).")

    def watchers(self) -> list[tuple[str, Any]]:
        """(key, section) of each callback that watches a metric: early stopping, a plateau schedule."""
        out = [("early_stopping", self.early_stopping)] if self.early_stopping is not None else []
        if self.schedule is not None and self.schedule.type == "plateau":
            out.append(("schedule", self.schedule))
        return out

    @model_validator(mode="after")
    def _monitors_are_logged(self):
        # Keras only warns about (or, with mode auto, fails mid-fit on) a monitor it never logs;
        # the names it logs are the loss and each metric as written, with val_ for validation.
        logged = ["loss", *self.metrics]
        for key, section in self.watchers():
            if section.monitor.removeprefix("val_") not in logged:
                names = [n for m in logged for n in (m, f"val_{m}")]
                raise ConfigError(
                    f"'{section.monitor}' is not a metric this run logs{did_you_mean(section.monitor, names)} "
                    f"(logged: {', '.join(names)})", path=("train", key, "monitor"))
        return self

    @field_validator("class_weight")
    @classmethod
    def _weights(cls, v):
        if isinstance(v, dict):
            if not v:
                raise ValueError("give at least one {class: weight}, or null")
            for key, weight in v.items():
                if not (math.isfinite(weight) and weight >= 0):
                    raise ConfigError(f"a class weight must be a finite number >= 0, found {weight}",
                                      path=("train", "class_weight", key))
        return v

    @field_validator("callbacks")
    @classmethod
    def _callbacks_shape(cls, v):
        for i, spec in enumerate(v):
            if len(spec) != 1:
                raise ConfigError(f"expected one {{Name: {{arguments}}}} mapping per callback, found keys "
                                  f"{sorted(map(str, spec))}", path=("train", "callbacks", i))
            (name, args), = spec.items()
            if args is not None and not isinstance(args, dict):
                raise ConfigError(f"a callback's arguments are a mapping (or null), found {type(args).__name__}",
                                  path=("train", "callbacks", i, name))
            refuse_non_finite(args, ["train", "callbacks", i, name])
        return v

    @field_validator("inter_op_threads")
    @classmethod
    def _threads(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 'auto' or an integer >= 0")
        return v

    @field_validator("steps_per_execution", "validation_batch_size")
    @classmethod
    def _positive_steps(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer_has_name(cls, v):
        if isinstance(v, dict) and not isinstance(v.get("name"), str):
            raise ValueError("an optimizer mapping needs a 'name' key, e.g. {name: sgd, momentum: 0.9}")
        refuse_non_finite(v, ["train", "optimizer"])
        return v


class BlockConfig(Section):
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameter name -> default; `$name` inside the block's layers is its value.")
    layers: list[Any] = Field(description="The block's layer specs, as in model.layers (names and inputs are "
                              "local to the block; `input` is the block's input).")

    @field_validator("layers")
    @classmethod
    def _has_layers(cls, layers):
        if not layers:
            raise ValueError("needs at least one layer")
        return layers


class ModelConfig(Section):
    layers: list[Any] = Field(default_factory=list, description="One single-key mapping per layer: {type: arguments} "
                              "(a type may be \"module:Class\", a layer of your own); `name` and `inputs` (earlier "
                              "layers' names) make a graph; a block's name uses the block. Required unless `factory` "
                              "is given.")
    input_shape: list[int] | None = Field(None, description="Override the input shape the dataset implies.")
    blocks: dict[str, BlockConfig] = Field(
        default_factory=dict, description="Reusable blocks with parameters, used by name in `layers` "
        "(`- residual: {filters: 32}`); see README's residual block.")
    weights: str | None = Field(
        None, description="A Keras weights file (.weights.h5) loaded into the built model, e.g. pretrained "
        "weights to fine-tune; a relative path is read beside the config file that names it.")
    factory: str | None = Field(
        None, description="\"module:function\" returning a keras.Model, instead of layers: called with `args`, and "
        "with input_shape and num_classes when it takes them (the module beside the config file, else on sys.path).")
    args: dict[str, Any] = Field(default_factory=dict, description="factory: its keyword arguments.")

    @model_validator(mode="after")
    def _layers_or_factory(self):
        if self.factory is None and not self.layers:
            raise ConfigError("required key is missing (or give model.factory)", path=("model", "layers"))
        if self.factory is not None and self.layers:
            raise ConfigError("give model.layers or model.factory, not both", path=("model", "factory"))
        if self.factory is None and self.args:
            raise ConfigError("model.args are the factory's arguments: give model.factory too", path=("model", "args"))
        if self.factory is not None and ":" not in self.factory:
            raise ConfigError(f"expected \"module:function\", found '{self.factory}'", path=("model", "factory"))
        refuse_non_finite(self.args, ["model", "args"])
        return self

    @field_validator("layers")
    @classmethod
    def _layers_shape(cls, layers):
        if not layers:
            raise ValueError("needs at least one layer")
        for i, spec in enumerate(layers):
            refuse_non_finite(spec, ["model", "layers", i])
        return layers

    @model_validator(mode="after")
    def _graph(self):
        from ..graph import plan_nodes

        # plan_nodes raises ConfigError, which pydantic does not catch: it escapes with its own
        # model.layers[i] path instead of being folded into a ValidationError.
        for name, block in self.blocks.items():
            refuse_non_finite(block.model_dump(), ["model", "blocks", name])
        if self.factory is None:  # a factory's model is the user's code: no layers to plan
            plan_nodes(self.layers, self.blocks)
        return self


def _same_value_key(value: Any) -> str:
    """A value's identity for spotting repeats: 0.1 twice, or the same mapping in another key order."""
    return json.dumps(value, sort_keys=True, default=str)


def _repeats(values: list) -> list:
    """The values of `values` listed more than once, each once, in order."""
    seen, out = set(), []
    for v in values:
        k = _same_value_key(v)
        if k in seen and all(_same_value_key(o) != k for o in out):
            out.append(v)
        seen.add(k)
    return out


class TrialResources(Section):
    cpus: float = Field(1.0, gt=0, description="Ray: CPUs each trial reserves (also its threads per op, rounded up).")
    gpus: float = Field(
        0.0, ge=0, description="Ray: GPUs each trial reserves; a fraction packs trials onto one GPU (0.25: four "
        "per GPU), each capped to its share of the GPU's memory. Above 1, a whole number.")

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, v):
        if v > 1 and v != int(v):  # Ray's own rule: a task takes part of one GPU or whole GPUs
            raise ValueError(f"must be at most 1 or a whole number, found {v}")
        return v


class SweepConfig(Section):
    jobs: int = Field(
        1, ge=1, description="Trials trained at once on this machine, each in its own worker process with an "
        "equal share of the cores; `expkit run --jobs N` overrides it.")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this machine (see jobs); ray: each trial a Ray task on a Ray cluster "
        "(pip install 'expkit[ray]'; docs/distributed.md); `--executor` overrides it.")
    resources: TrialResources = Field(
        default_factory=TrialResources, description="Ray: what each trial reserves on the cluster.")
    address: str | None = Field(
        None, description="Ray: the cluster to use (`--address` overrides it; default $RAY_ADDRESS, else a Ray "
        "instance started on this machine for the sweep).")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Every combination of these values; keys are key paths like "
        "train.learning_rate or model.layers[1].dense.units.")
    zip: dict[str, list[Any]] = Field(
        default_factory=dict, description="Keys that move together, one trial per position (lists of equal length).")
    seeds: list[Seed] | None = Field(None, description="Repeat every trial with each of these seeds.")
    folds: int | None = Field(
        None, ge=2, description="K-fold cross-validation: repeat every trial (at every seed) on each of K splits of "
        "the training set (data.fold), each fold's validation set a K-th of it; tables average the folds as seeds.")
    vectorize: Union[bool, Literal["auto"]] = Field(
        "auto", description="Train trials that differ only in numbers that change no shape (learning rate, optimizer "
        "and schedule settings, L1/L2 factors, dropout rates, seeds) together as one compiled JAX program, each "
        "trial still with its own data order, early stopping and run folder (needs jax: pip install "
        "'expkit[jax]'). auto: such groups where the training saved outweighs starting JAX, the other trials one "
        "at a time; true: every unfinished trial in one program (split only for memory), else an error naming "
        "the key that prevents it; false: one trial at a time.")
    vectorize_max: int | None = Field(
        None, ge=1, description="At most this many trials in one vectorised program (a larger group is split); "
        "null: as many as fit in the memory available.")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="A search space: key paths -> {uniform: [lo, hi]}, {log_uniform: [lo, hi]}, "
        "{int: [lo, hi], log: bool, step: n} or {choice: [values]}; sampled as sweep.search says (instead of grid "
        "and zip; seeds repeat each proposed configuration).")
    search: SearchConfig | None = Field(
        None, description="How the space is searched: the sampler, how many configurations, the objective.")
    prune: PruneConfig | None = Field(
        None, description="Stop losing trials early (grids and searches alike): recorded `pruned`, never retrained.")

    @model_validator(mode="after")
    def _consistent(self):
        # A repeated value would run the same trial twice under two names and count it twice in a mean.
        paths: dict[tuple, str] = {}
        for block in ("grid", "zip"):
            for key, values in getattr(self, block).items():
                where = f"sweep.{block}.{key}"
                try:
                    canonical = tuple(split_key(key))
                except ConfigError as exc:
                    raise ConfigError(exc.message, path=where) from None
                if canonical in paths:
                    raise ConfigError(f"sets the same key as {paths[canonical]}; give it once", path=where)
                paths[canonical] = where
                if not values:
                    raise ConfigError("needs at least one value", path=where)
                if block == "grid" and (dups := _repeats(values)):
                    raise ConfigError(f"each value must appear once; {_shown(dups)} listed twice or more", path=where)
        if self.seeds is not None and (dups := _repeats(self.seeds)):
            raise ConfigError(f"each seed must appear once; {_shown(dups)} listed twice or more", path="sweep.seeds")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ConfigError(f"all lists must have the same length, found lengths {sorted(lengths)}", path="sweep.zip")
        if self.zip:
            keys = list(self.zip)
            positions = [[self.zip[k][i] for k in keys] for i in range(lengths.pop())]
            for dup in _repeats(positions):
                at = [i for i, p in enumerate(positions) if _same_value_key(p) == _same_value_key(dup)]
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, dup))
                raise ConfigError(f"positions {', '.join(map(str, at))} repeat the same values ({shown}); "
                                  "each position must differ", path="sweep.zip")
        for key in self.space:
            try:
                split_key(key)
            except ConfigError as exc:
                raise ConfigError(exc.message, path=f"sweep.space.{key}") from None
        check_search(self)
        if not (self.grid or self.zip or self.seeds or self.folds or self.space):
            raise ValueError("an empty sweep: give grid, zip, seeds, folds or a search space")
        return self


def _shown(values: list) -> str:
    return ", ".join(repr(v) for v in values)


class ExperimentConfig(Section):
    name: str = Field(
        description=f"Run name; the run folder is runs/<name>/<run-id>. Defaults to the file's stem. "
        f"A plain folder name of at most {NAME_MAX} characters.")
    description: str = Field("", description="Free text about the experiment, kept with its results.")
    provenance: Literal["reproduced", "invented"] | None = Field(
        None, description="reproduced: an experiment a seed report ran, as far as it states it; invented: one the "
        "seeds do not specify (a sweep they only discuss, layers they do not give, a rerun on other data). "
        "Kept in the run's config.yaml, a column of `expkit table --only-changed`.")
    seed: Seed = Field(0, description=f"Seeds data order, split, initialisers and dropout (0..{SEED_MAX}).")
    backend: Literal["tensorflow", "jax", "torch"] = Field(
        default_factory=default_backend, validate_default=True,
        description="Keras backend the run trains on: tensorflow, jax or torch (default: $KERAS_BACKEND when set, "
        "else tensorflow). Chosen before Keras is imported; `expkit run --backend jax` overrides it. jax and "
        "torch need their library: pip install 'expkit[jax]' or 'expkit[torch]'.")
    data: DataConfig = Field(default_factory=DataConfig, description="Which dataset and how to prepare it.")
    model: ModelConfig = Field(description="The model: a list of layer specs.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimizer, loss, batches, epochs and callbacks.")
    track: list[str] = Field(
        default_factory=list, description="Trackers that also record the run: tensorboard (event files in "
        "<run>/tensorboard/, HParams for sweeps), mlflow (one MLflow run per run, sweeps as parent and child runs, "
        "in mlflow.db beside the runs folder or $MLFLOW_TRACKING_URI). Each needs its library: pip install "
        "'expkit[tensorboard]' or 'expkit[mlflow]'. `expkit run --track` overrides it. A tracker that fails is "
        "one warning line; the run and its record go on.")
    sweep: SweepConfig | None = Field(
        None, description="Run several trials of this config: a grid, zipped keys and/or seeds.")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v):
        # The name becomes runs/<name>/: a separator or '..' would put the run somewhere else.
        if not v.strip() or v.strip(".") == "" or any(c in v for c in "/\\\0"):
            raise ValueError(f"must be a plain folder name (no '/', '\\', '.' or '..'), found {v!r}")
        size = len(v.encode("utf-8"))
        if size > NAME_MAX:
            raise ValueError(f"is {size} characters (UTF-8 bytes) long; a run name becomes a folder name and "
                             f"may have at most {NAME_MAX}: shorten it (it defaults to the config file's stem)")
        return v

    @field_validator("track")
    @classmethod
    def _known_trackers(cls, v):
        from ..tracking import TRACKERS  # names only: no tracker library is imported here

        for i, name in enumerate(v):
            TRACKERS.get(name, path=("track", i))
            if name in v[:i]:
                raise ConfigError(f"'{name}' is listed twice; give each tracker once", path=("track", i))
        return v

    @model_validator(mode="after")
    def _folds_choose_the_validation_set(self):
        check_folds(self)
        return self

    @model_validator(mode="after")
    def _val_monitors_need_a_validation_set(self):
        # Keras only warns, every epoch, that val_loss is missing: early stopping never fires.
        if self.data.validation_split != 0:
            return self
        for key, section in self.train.watchers():
            if section.monitor.startswith("val_"):
                raise ConfigError(
                    f"'{section.monitor}' is never logged: data.validation_split is 0, so there is no validation "
                    f"set and {key} would never act; set data.validation_split > 0 or monitor a training metric "
                    f"('{section.monitor.removeprefix('val_')}')", path=("train", key, "monitor"))
        return self

    def to_dict(self) -> dict:
        """The resolved config as plain data (every default filled in), ready for YAML."""
        data = self.model_dump(mode="json")
        if data["provenance"] is None:  # an unmarked config resolves (and its trials hash) as before the key existed
            del data["provenance"]
        for section, key, unset in (("model", "blocks", {}), ("model", "weights", None), ("model", "factory", None),
                                    ("model", "args", {}), ("train", "class_weight", None), ("train", "callbacks", [])):
            if data[section][key] == unset:  # likewise for a config without them
                del data[section][key]
        if data["data"]["fold"] is None:  # likewise a run without cross-validation
            del data["data"]["fold"]
        if data["sweep"] is not None and data["sweep"]["folds"] is None:
            del data["sweep"]["folds"]
        return data


# Keys that say how a run is recorded, never what it computes. A sweep trial's identity (its id, a
# hash of the resolved config) leaves them out, so turning tracking on, or a version that adds such a
# key, does not make finished trials look new and train again.
RECORDING_KEYS = (("track",), ("train", "save_model"), ("train", "checkpoint"), ("train", "test_each_epoch"))


def without_recording_keys(resolved: dict) -> dict:
    """A copy of a resolved config without RECORDING_KEYS: what decides the numbers a run produces."""
    out = copy.deepcopy(resolved)
    for *parents, key in RECORDING_KEYS:
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return out


# --- key paths: here rather than in loading.py because SweepConfig checks its keys with split_key ---


_KEY_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[[0-9]+\])*)")


def split_key(key: str) -> list:
    """'model.layers.2.dropout' or 'model.layers[2].dropout' (as errors print it) -> ['model', 'layers', 2, 'dropout']."""
    parts: list = []
    for segment in str(key).split("."):
        match = _KEY_SEGMENT.fullmatch(segment.strip())
        if match is None:
            raise ConfigError(f"'{key}' is not a key path: expected names joined by dots, list indexes written "
                              "as .1 or [1] (e.g. model.layers[1].dense.units)")
        name, indexes = match.groups()
        parts.append(int(name) if name.isascii() and name.isdigit() else name)
        parts += [int(i) for i in re.findall(r"[0-9]+", indexes)]
    return parts
