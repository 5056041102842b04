"""Which rank a process is, from the launchers' environment variables (stdlib only)."""

from __future__ import annotations

import os
import sys

__all__ = [
    "RANK_VARS",
    "LOCAL_RANK_VARS",
    "WORLD_SIZE_VARS",
    "env_int",
    "is_launcher_process",
    "is_multiprocessing_child",
]

# torchrun sets the first; SLURM's srun and Open MPI's mpirun set the others for each task.
RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.elastic")


def env_int(names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` set to an integer in the environment, else ``default``."""
    for name in names:
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return default


def is_launcher_process() -> bool:
    """True for torchrun / torch.distributed.launch itself (it spawns the ranks, it is not one)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if name.startswith(LAUNCHER_MODULES):
        return True
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    return argv0 in ("torchrun", "torchrun.exe") or (
        bool(sys.argv)
        and sys.argv[0].replace("\\", "/").endswith(("torch/distributed/run.py", "torch/distributed/launch.py"))
    )


def is_multiprocessing_child() -> bool:
    """True in a process that multiprocessing started (a DataLoader worker, a pool process)."""
    try:
        import multiprocessing

        return multiprocessing.parent_process() is not None
    except Exception:
        return False
