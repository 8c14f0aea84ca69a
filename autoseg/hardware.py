"""What this machine offers (CPUs, memory) and the defaults autoseg derives from it.

Pure rules take the figures as arguments (`training_workers(device_type, cpus, ...)`) so tests can
state any machine; `usable_cpus()` and `available_memory_bytes()` read the real one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MEMINFO = Path("/proc/meminfo")

# Augmentation workers per training process. On a GPU the network waits for data unless several
# processes augment (nnU-Net uses 12); on a CPU the network itself needs the cores, and one worker
# keeps up with it (an augmented batch takes a fraction of a CPU iteration, see bench/train_step.py).
MAX_GPU_TRAINING_WORKERS = 12
CPU_TRAINING_WORKERS = 1
# A worker holds a few batches in flight (the loader's queue) plus scipy's temporaries.
WORKER_BATCHES_IN_MEMORY = 4
# Share of the available memory the workers (or the batched windows of inference) may take.
MEMORY_SHARE = 0.5


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota) if quota else count)


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


def available_memory_bytes() -> int:
    """Memory the kernel can give without swapping (MemAvailable), else free physical pages."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# Voxels per channel beyond which an image is refused: flat indices into it overflow 32-bit integers.
MAX_VOXELS_PER_CHANNEL = 2**31
FLOAT32_BYTES = 4  # an image is read as float32


def image_size_problem(size: Sequence[int], values_per_voxel: int, available_bytes: int) -> str | None:
    """Why an image of `size` voxels (as its header states them, channels of a 4D file included) with
    `values_per_voxel` values each cannot be read, or None: more than MAX_VOXELS_PER_CHANNEL voxels per
    channel, or more float32 values than `available_bytes` of memory hold."""
    claims = f"the header claims {' x '.join(str(n) for n in size)} voxels"
    voxels = math.prod(size[:3])
    if voxels > MAX_VOXELS_PER_CHANNEL:
        return f"{claims}, more than the {MAX_VOXELS_PER_CHANNEL:,} per channel autoseg reads"
    decoded = FLOAT32_BYTES * voxels * values_per_voxel
    if decoded > available_bytes:
        return f"{claims}, {_size(decoded)} once read, more than the {_size(available_bytes)} of memory available"
    return None


def _size(count: int) -> str:
    """e.g. "3.2 GiB", "80.0 KiB", "512 bytes"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def training_workers(device_type: str, cpus: int, available_bytes: int, batch_bytes: int) -> int:
    """Augmentation worker processes for training: on CUDA/MPS one per spare CPU (up to 12), on a CPU
    one (0 on a single core, where a worker would only take turns with the network); never more than
    fit in MEMORY_SHARE of the available memory."""
    if device_type == "cpu":
        wanted = CPU_TRAINING_WORKERS if cpus > 1 else 0
    else:
        wanted = max(1, min(MAX_GPU_TRAINING_WORKERS, cpus - 1))
    fit = int(available_bytes * MEMORY_SHARE // max(1, batch_bytes * WORKER_BATCHES_IN_MEMORY))
    return max(0, min(wanted, fit)) if wanted else 0


# Windows per network call in sliding-window inference. A GPU wants several to keep busy; a CPU's
# cores are already busy inside one 3D window's convolutions, and a second mainly amortizes the
# per-call overhead (2D patches, small networks) and keeps PyTorch on oneDNN's convolutions, which it
# leaves for a much slower native one for a batch of one on small maps.
GPU_BATCH_WINDOWS = 4
CPU_BATCH_WINDOWS = 2


def inference_batch_windows(device_type: str, cpus: int, available_bytes: int, bytes_per_window: int) -> int:
    """Windows per batch: GPU_BATCH_WINDOWS on CUDA/MPS, CPU_BATCH_WINDOWS on a multi-core CPU (1 on one
    core), never more than fit in MEMORY_SHARE of the available (device) memory; at least 1."""
    wanted = GPU_BATCH_WINDOWS if device_type != "cpu" else (CPU_BATCH_WINDOWS if cpus > 1 else 1)
    fit = int(available_bytes * MEMORY_SHARE // max(1, bytes_per_window))
    return max(1, min(wanted, fit))
