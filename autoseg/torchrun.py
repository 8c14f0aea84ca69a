"""Training on several processes with torchrun: the launch by `autoseg train --gpus N` (with --nnodes,
--node-rank, --master-addr, --master-port on several machines), and each rank's start.

This is the command line's boundary with torchrun: it reads the environment variables torchrun sets
(WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE) and the process's own arguments, so the training core never does.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from autoseg.errors import AutosegError

TORCHRUN_LAUNCHER_PID = "AUTOSEG_TORCHRUN_LAUNCHER_PID"


def init_rank(device: str = "auto"):
    """This process's DistributedRank under torchrun (None without it), its process group initialised.

    torchrun sets WORLD_SIZE/RANK/LOCAL_RANK/LOCAL_WORLD_SIZE; read them here, at the boundary, not in
    the core. One GPU per rank of this machine over NCCL when CUDA is there (and --device is not cpu),
    else CPU ranks over gloo."""
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
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    return DistributedRank(rank_device, rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_world_size=local_world_size)


@dataclass(frozen=True)
class Nodes:
    """The machines of one training run and this machine's place among them (torchrun's static rendezvous:
    every machine runs the same command with its own --node-rank and the address of the one with rank 0)."""

    count: int = 1  # --nnodes
    rank: int = 0  # --node-rank: 0 .. count - 1; node 0 holds global rank 0, which alone writes
    master_addr: str | None = None  # --master-addr: node 0's address, reachable from every node
    master_port: int | None = None  # --master-port: a free port on node 0 (torchrun's default 29500)

    def torchrun_arguments(self) -> list[str]:
        """torchrun's rendezvous options: --standalone on one machine, the static rendezvous on several."""
        if self.count == 1:
            return ["--standalone"]
        if not self.master_addr:
            raise AutosegError(f"--nnodes {self.count}: give --master-addr, the address of the machine started "
                               "with --node-rank 0 (and the same --master-port on every machine)")
        if not 0 <= self.rank < self.count:
            raise AutosegError(f"--node-rank {self.rank}: expected 0 .. {self.count - 1} for --nnodes {self.count}")
        port = [f"--master-port={self.master_port}"] if self.master_port is not None else []
        return [f"--nnodes={self.count}", f"--node-rank={self.rank}", f"--master-addr={self.master_addr}", *port]


# Options of `autoseg train` that are the launcher's, not the ranks': dropped from the ranks' command line.
LAUNCHER_OPTIONS = ("--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port")


def launch(gpus: int, nodes: Nodes = Nodes()) -> int:
    """Run this very command line again under torchrun: `gpus` processes on this machine, one of
    `nodes.count` machines (minus the launcher's own options); its exit code."""
    import subprocess

    if gpus > 1:  # one process per machine always fits (a GPU, or the CPU); torch takes seconds to import
        import torch

        if torch.cuda.is_available() and gpus > torch.cuda.device_count():
            raise AutosegError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    rendezvous = nodes.torchrun_arguments()
    arguments = list(sys.argv[1:])
    for flag in LAUNCHER_OPTIONS:  # drop "--flag V" / "--flag=V" so the ranks train normally
        while flag in arguments:
            index = arguments.index(flag)
            del arguments[index:index + 2]
        arguments = [a for a in arguments if not a.startswith(flag + "=")]
    command_line = [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={gpus}",
                    "-m", "autoseg.cli", *arguments]
    environment = {**os.environ, TORCHRUN_LAUNCHER_PID: str(os.getpid())}  # the ranks end when this process does
    return subprocess.call(command_line, env=environment)
