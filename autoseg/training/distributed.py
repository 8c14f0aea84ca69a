"""Rank bookkeeping for training under torch.distributed (torchrun): which process this is, and sums
over all of them. Without an initialised process group, a single process is rank 0 of 1."""

from __future__ import annotations

import numpy as np


class Ranks:
    """This process's place among the training processes."""

    def __init__(self):
        import torch.distributed as dist

        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes checkpoints and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank has come here (nothing to wait for in a single process)."""
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: np.ndarray) -> np.ndarray:
        """`values` summed over every rank (as float64)."""
        if not self.active:
            return values
        import torch
        import torch.distributed as dist

        # NCCL (multi-GPU training) reduces CUDA tensors only; gloo reduces CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()
