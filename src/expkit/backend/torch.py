"""The PyTorch backend: one step per call (Keras' torch trainer has no steps_per_execution)."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import Backend, cpu_model_name, resolve_inter_op_threads


class Torch(Backend):
    """The PyTorch backend: one step per call (Keras' torch trainer has no steps_per_execution)."""

    name = "torch"
    module = "torch"

    @classmethod
    def before_start(cls, device: str, deterministic: bool) -> None:
        if device == "cpu":
            os.environ["KERAS_TORCH_DEVICE"] = "cpu"  # Keras reads it once, when it is imported
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' deterministic workspace

    def gpus(self) -> list:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]

    def select_device(self, device: str) -> str:
        from keras.src.backend.torch import core

        gpus = self.gpus()
        if device == "gpu" and not gpus:
            raise ConfigError("--device gpu: PyTorch sees no GPU on this machine (torch.cuda.is_available() is "
                              "False; is the CUDA build of torch installed?); use --device cpu or auto")
        in_use = str(core.get_device()) if hasattr(core, "get_device") else str(core.DEFAULT_DEVICE)
        wanted_cpu = device == "cpu" or not gpus
        if wanted_cpu != in_use.startswith("cpu"):
            raise ConfigError(f"--device {device}: Keras was imported in this process with torch device "
                              f"'{in_use}', and it chooses once; start a new process (the expkit command sets "
                              "KERAS_TORCH_DEVICE first)")
        return f"CPU ({cpu_model_name()})" if wanted_cpu else f"GPU ({gpus[0]})"

    def set_inter_op_threads(self, setting) -> int:
        import torch

        threads = resolve_inter_op_threads(setting, os.cpu_count(), bool(self.gpus()))
        if threads:
            try:
                torch.set_num_interop_threads(threads)
            except RuntimeError:  # parallel work already started in this process: keep what is set
                pass
        return torch.get_num_interop_threads()

    def check_config(self, cfg) -> None:
        super().check_config(cfg)
        self.steps_per_execution(cfg.train.steps_per_execution, 1)

    def steps_per_execution(self, requested, auto_value: int) -> int:
        if requested != "auto" and requested > 1:
            raise ConfigError(f"Keras' PyTorch backend runs one training step per call, found {requested}; use 1 "
                              "or auto", path=("train", "steps_per_execution"))
        return 1

    def set_determinism(self, deterministic: bool) -> None:
        import torch

        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
