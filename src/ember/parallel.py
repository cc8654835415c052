"""More than one process (`torchrun`): the ranks share the particles of every E-step, add their
sums with an all-reduce (gloo on CPU, NCCL on GPUs), then run the same M-step; rank 0 writes.

One process (no `WORLD_SIZE` in the environment) is the rank 0 of a world of one: every method is
then a no-op, so the jobs read the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among `size` processes; `device` is where the all-reduce runs."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_environment(cls, device: torch.device) -> Ranks:
        """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE,
        MASTER_ADDR…); a world of one when it is absent. On CUDA each process takes the GPU of
        its LOCAL_RANK."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def share(self, indices: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of `indices` (parts differ by at most one)."""
        return np.array_split(indices, self.size)[self.rank]

    def add(self, *arrays: np.ndarray | torch.Tensor) -> None:
        """Replace each array (NumPy or torch, any shape) by its sum over the ranks, in place
        (floating arrays in their own precision, integers exactly through float64)."""
        if self.size == 1:
            return
        for a in arrays:
            t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
            exact = t.dtype if t.is_floating_point() else torch.float64  # integers travel as float64
            work = t.to(self.device, exact)
            dist.all_reduce(work)
            if work.data_ptr() != t.data_ptr():
                t.copy_(work.to(t.dtype))

    def close(self) -> None:
        """Leave the process group (after the last collective)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
