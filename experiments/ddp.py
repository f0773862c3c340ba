"""Several training processes under ``torchrun``: set up and tear down the process group.

``torchrun --nproc_per_node N -m experiments.train ARGS`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment. :func:`setup` joins
them with the gloo backend on CPU (NCCL when CUDA is available); :func:`experiments.train.fit` then
wraps the model in ``DistributedDataParallel`` and slices every global batch by rank. A process
started without ``torchrun`` is a world of one and nothing happens.
"""

from __future__ import annotations

import os

import torch

__all__ = ["setup", "cleanup", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def setup(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment, if ``WORLD_SIZE > 1``.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; by default NCCL when CUDA is available, else gloo.

    Returns:
        (rank, world_size)
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return world()
    if not torch.distributed.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)
    return world()


def cleanup() -> None:
    """Leave the process group, if any."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
