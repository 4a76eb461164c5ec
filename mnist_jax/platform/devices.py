"""What hardware JAX runs on, said once at start-up (the first log line of a run or a
sweep), and a warning where an NVIDIA GPU sits idle because the installed jaxlib has
no CUDA support (`pip install -e .` brings a CPU-only one)."""

from __future__ import annotations

import logging
import os
import shutil

import jax

log = logging.getLogger(__name__)

NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def summary() -> str:
    """E.g. 'JAX on gpu: 8 x NVIDIA H200 (process 0 of 1)'."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"JAX on {jax.default_backend()}: {len(devices)} x {', '.join(kinds)} "
        f"(process {jax.process_index()} of {jax.process_count()})"
    )


def nvidia_gpu_present() -> bool:
    """Whether the host has an NVIDIA driver loaded or its tools installed."""
    return os.path.exists(NVIDIA_DRIVER_FILE) or shutil.which("nvidia-smi") is not None


def cpu_chosen() -> bool:
    """Whether the user asked for the CPU (JAX_PLATFORMS=cpu or jax_platforms)."""
    chosen = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or ""
    return chosen.split(",")[0].strip() == "cpu"


def unused_gpu_warning() -> str | None:
    """The warning for a GPU host on which JAX fell back to the CPU, else None."""
    if jax.default_backend() != "cpu" or cpu_chosen() or not nvidia_gpu_present():
        return None
    return (
        "an NVIDIA GPU is present but JAX runs on the CPU (the installed jaxlib has no "
        "CUDA support): pip install -e '.[cuda12]' to use it, or set JAX_PLATFORMS=cpu "
        "to run on the CPU without this warning"
    )


def log_startup() -> None:
    """The platform and devices, and any unused-GPU warning: call once JAX's devices are
    configured (after `sweep.use_cpu_cores`), before the work starts."""
    log.info("%s", summary())
    warning = unused_gpu_warning()
    if warning:
        log.warning("%s", warning)


def use_cpu_cores(num_devices: int | None = None) -> None:
    """Splits the CPU backend into `num_devices` JAX devices (default: one per core the
    process may use) before JAX starts. One CPU device runs a program's small ops on
    one core; a sweep's members shard over devices, so this puts every core to work.
    Leaves an `XLA_FLAGS` device count alone; does nothing to a GPU or TPU backend."""
    if num_devices is None:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
            return
        num_devices = len(os.sched_getaffinity(0))
    jax.config.update("jax_num_cpu_devices", num_devices)
