"""expkit: Keras experiments declared in YAML, trained, recorded and compared.

    import expkit
    cfg = expkit.load_config("configs/cnn1.yaml", overrides={"train.epochs": 2})
    run = expkit.run(cfg)            # run.history (DataFrame), run.model, run.record, run.path
    sweep = expkit.sweep("configs/sweep_lr.yaml")
    expkit.table(["runs/cnn1", "runs/cnn2"])
    expkit.compare(["runs/cnn1", "runs/cnn2"], "cnn1", "cnn2")   # is the difference real? (scipy)

The entry points are loaded on first use, so `import expkit` imports no Keras backend.
"""

from .version import __version__

_API = ("load_config", "run", "resume", "sweep", "table", "compare", "Run", "Sweep", "ConfigError")
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'expkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
