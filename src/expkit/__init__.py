"""expkit: Keras experiments declared in YAML, trained, recorded and compared."""

__version__ = "0.1.0"
