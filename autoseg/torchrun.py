"""Training on several processes with torchrun: the launch by `autoseg train --gpus N`, and each rank's start.

This is the command line's boundary with torchrun: it reads the environment variables torchrun sets
(WORLD_SIZE, RANK, LOCAL_RANK) and the process's own arguments, so the training core never does.
"""

from __future__ import annotations

import os
import sys

from autoseg.errors import AutosegError

TORCHRUN_LAUNCHER_PID = "AUTOSEG_TORCHRUN_LAUNCHER_PID"


def init_rank(device: str = "auto"):
    """This process's DistributedRank under torchrun (None without it), its process group initialised.

    torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; read them here, at the boundary, not in the core.
    One GPU per rank over NCCL when CUDA is there (and --device is not cpu), else CPU ranks over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from autoseg.processes import exit_with_torchrun

    launcher = os.environ.get(TORCHRUN_LAUNCHER_PID)
    exit_with_torchrun(int(launcher) if launcher else None)  # first: init_process_group may wait for other ranks
    import torch
    import torch.distributed as dist

    from autoseg.stages.train import DistributedRank

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device != "cpu":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        rank_device = f"cuda:{local_rank}"
    else:
        dist.init_process_group("gloo")
        rank_device = "cpu"
    return DistributedRank(rank_device, rank=dist.get_rank(), world_size=dist.get_world_size())


def launch(gpus: int) -> int:
    """Run this very command line again under torchrun with N processes (minus --gpus); its exit code."""
    import subprocess

    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise AutosegError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) are visible")

    arguments = [a for a in sys.argv[1:]]
    for flag in ("--gpus",):  # drop "--gpus N" / "--gpus=N" so the children train normally
        while flag in arguments:
            index = arguments.index(flag)
            del arguments[index:index + 2]
        arguments = [a for a in arguments if not a.startswith(flag + "=")]
    command_line = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                    "-m", "autoseg.cli", *arguments]
    environment = {**os.environ, TORCHRUN_LAUNCHER_PID: str(os.getpid())}  # the ranks end when this process does
    return subprocess.call(command_line, env=environment)
