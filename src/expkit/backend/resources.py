"""A worker process's share of the machine (parallel sweeps: expkit.workers, expkit.ray_executor).

Thread pools and GPU memory are sized when a backend starts, so a worker sets these first."""

from __future__ import annotations

import os
import sys


# Of a trial's GPU share, the part its backend may allocate; the rest is left for the CUDA context
# (a few hundred MB) that every process on the GPU also holds.
GPU_MEMORY_HEADROOM = 0.9


def share_env(threads: int | None = None, gpu_fraction: float | None = None, environ=None) -> dict[str, str]:
    """Environment variables that hold a worker process to `threads` threads per op and, below one
    whole GPU, to `gpu_fraction` of its memory, on TensorFlow, JAX and PyTorch alike. They must be in
    the environment before the backend is imported; TensorFlow's and PyTorch's memory caps are then
    applied by `cap_gpu_memory`."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    if threads:
        n = str(int(threads))
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,  # PyTorch, numpy's BLAS
                   TF_NUM_INTRAOP_THREADS=n)  # TensorFlow: each op's own thread pool
        if int(threads) == 1:  # XLA on a CPU (JAX): one thread per op; XLA has no knob for another count
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {flags}".strip()
    if gpu_fraction is not None and 0 < gpu_fraction < 1:
        share = f"{gpu_fraction * GPU_MEMORY_HEADROOM:.3f}"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = share  # JAX: the allocator's limit, read when JAX starts
        env["EXPKIT_GPU_MEMORY_FRACTION"] = share      # cap_gpu_memory: TensorFlow, PyTorch
    return env


def cap_gpu_memory(backend_name: str, fraction: float | None = None) -> str | None:
    """Cap this process's memory on each visible GPU to `fraction` of it (default: what share_env
    set), after the backend is imported and before it touches a device. Returns what was done."""
    if fraction is None:
        fraction = float(os.environ.get("EXPKIT_GPU_MEMORY_FRACTION") or 0) or None
    if fraction is None:
        return None
    if backend_name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        totals = _gpu_memory_mb()
        if len(totals) < len(gpus):
            print("expkit: cannot read the GPUs' memory size (nvidia-smi); this trial's GPU memory is not capped",
                  file=sys.stderr)
            return None
        try:
            for gpu, total in zip(gpus, totals):
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(total * fraction))])
        except RuntimeError:  # devices already started in this process (a reused worker): capped before
            return None
        return f"TensorFlow: {int(totals[0] * fraction)} MB per GPU"
    if backend_name == "torch":
        import torch

        for i in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, i)
        return f"PyTorch: {fraction:.3f} of each GPU"
    return f"{backend_name}: XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')}"


def _gpu_memory_mb() -> list[int]:
    """Total memory (MB) of each GPU this process sees, in CUDA_VISIBLE_DEVICES order (nvidia-smi)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.count(",") == 2]
    by_key = {key: int(float(total)) for index, uuid, total in rows for key in (index, uuid)}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [int(float(total)) for _, _, total in rows]
    return [by_key[v.strip()] for v in visible.split(",") if v.strip() in by_key]
