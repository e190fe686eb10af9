"""The experiment config: one schema, one validation path, key paths in every error.
Nothing here imports TensorFlow.

- `schema`: the pydantic sections (`ExperimentConfig` and its parts), their checks, and key-path syntax.
- `search`: a sweep's search space, sampler and pruning settings.
- `loading`: YAML files, `extends`, `--set` overrides, validation and `load_config`.
"""

from .loading import (
    apply_overrides,
    deep_merge,
    json_schema,
    load_config,
    load_raw,
    parse_override,
    read_yaml,
    set_path,
    validate,
)
from .search import Distribution, PruneConfig, SearchConfig, check_search, direction_of, parse_distribution
from .schema import (
    NAME_MAX,
    RECORDING_KEYS,
    SEED_MAX,
    BlockConfig,
    DataConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    ModelConfig,
    OptimizerSpec,
    ScheduleConfig,
    Section,
    Seed,
    SweepConfig,
    TrainConfig,
    TrialResources,
    refuse_non_finite,
    split_key,
    without_recording_keys,
)

__all__ = [
    "Distribution", "PruneConfig", "SearchConfig", "check_search", "direction_of", "parse_distribution",
    "NAME_MAX",
    "RECORDING_KEYS",
    "SEED_MAX",
    "BlockConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimizerSpec",
    "ScheduleConfig",
    "Section",
    "Seed",
    "SweepConfig",
    "TrainConfig",
    "TrialResources",
    "apply_overrides",
    "deep_merge",
    "json_schema",
    "load_config",
    "load_raw",
    "parse_override",
    "read_yaml",
    "refuse_non_finite",
    "set_path",
    "split_key",
    "validate",
    "without_recording_keys",
]
