"""The trace vocabulary: event kinds, Kineto categories and the names the analysis recognises.

Every module that classifies an event by its category or name (the decoder, the breakdown,
compaction, the analyzers) takes the spelling from here, so one list holds each rule. This is
the bottom layer of the analysis side: it imports none of our modules and nothing outside the
standard library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum

__all__ = [
    "Kind",
    "anycase",
    "short_kernel_name",
    "GPU_KINDS",
    "GPU_ARG_KINDS",
    "KIND_OF_CATEGORY",
    "SKIPPED_CATEGORIES",
    "SKIP",
    "UNTIMED_OF",
    "UNTIMED_KINDS",
    "category_kind",
    "is_mtia_copy",
    "MTIA_DEVICE_CATEGORY",
    "MTIA_NOT_WORK",
    "is_startup_call",
    "is_work_call",
    "SYNC_CALLS",
    "COLLECTIVE_ARG_KEYS",
    "MEMORY_ARG_KEYS",
    "MEMORY_EVENT",
    "PROFILER_STEP",
    "STALLSCOPE_STEP",
    "STEP_NAME",
    "DATA_WAIT",
    "DATA_PHASE",
    "CPU_COPY_OPS",
    "COMPACT_KEEP_PREFIXES",
    "is_sync_call",
    "is_data_wait",
    "is_comm_kernel",
    "is_comm_op",
    "is_device_to_host",
]


class Kind(IntEnum):
    """Event kinds (the ``kind`` column of the event table)."""

    CPU_OP = 0  # cat cpu_op / operator (aten::*, ProfilerStep#N, enumerate(DataLoader)...)
    RUNTIME = 1  # cat cuda_runtime / cuda_driver (cudaLaunchKernel, cudaStreamSynchronize...)
    KERNEL = 2  # cat kernel
    MEMCPY = 3  # cat gpu_memcpy
    MEMSET = 4  # cat gpu_memset
    ANNOTATION = 5  # cat user_annotation (record_function, our step / phase ranges)
    GPU_ANNOTATION = 6  # cat gpu_user_annotation
    PYTHON = 7  # cat python_function (with_stack=True)
    OTHER = 8  # everything else kept (e.g. cpu_instant_event); see SKIPPED_CATEGORIES
    # GPU rows whose device timestamps are unusable (analyzers/clock.py): kept for their names,
    # args and links (name-based analysis), placed at their launch's time with no duration, and
    # on no timeline (they are not GPU_KINDS, so no GPU-time figure counts them).
    UNTIMED_KERNEL = 9
    UNTIMED_MEMCPY = 10
    UNTIMED_MEMSET = 11
    UNTIMED_GPU_ANNOTATION = 12


# Rows that run on the GPU (the device timeline).
GPU_KINDS = (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET)
# Rows whose args carry a stream and a device.
GPU_ARG_KINDS = (Kind.KERNEL, Kind.MEMCPY, Kind.MEMSET, Kind.GPU_ANNOTATION)

# Kineto's ``cat`` -> kind, keyed in lower case: every spelling PyTorch >= 1.8 has written
# (1.8/1.9: ``Operator``, ``Runtime``, ``Kernel``, ``Memcpy``, ``Memset``, ``User`` for the GPU-side
# annotation; 1.10: ``cpu_op`` with ``gpu_user_Annotation``; later the lower-case names), ROCm
# (the ``cuda_*`` names with HIP calls in them), MTIA (``mtia_runtime``, ``mtia_ccp_events``) and
# the other Kineto runtimes. A category not listed becomes Kind.OTHER.
KIND_OF_CATEGORY = {
    "cpu_op": Kind.CPU_OP,
    "operator": Kind.CPU_OP,
    "cuda_runtime": Kind.RUNTIME,
    "cuda_driver": Kind.RUNTIME,
    "runtime": Kind.RUNTIME,
    "mtia_runtime": Kind.RUNTIME,
    "xpu_runtime": Kind.RUNTIME,
    "privateuse1_runtime": Kind.RUNTIME,
    "privateuse1_driver": Kind.RUNTIME,
    "kernel": Kind.KERNEL,
    "mtia_ccp_events": Kind.KERNEL,  # MTIA device work; its copies are re-kinded by name (loader)
    "gpu_memcpy": Kind.MEMCPY,
    "memcpy": Kind.MEMCPY,
    "gpu_memset": Kind.MEMSET,
    "memset": Kind.MEMSET,
    "user_annotation": Kind.ANNOTATION,
    "gpu_user_annotation": Kind.GPU_ANNOTATION,
    "user": Kind.GPU_ANNOTATION,  # 1.8/1.9: record_function ranges on a GPU stream ("stream 7 user")
    "python_function": Kind.PYTHON,
    "python": Kind.PYTHON,
}
# Categories dropped while parsing (lower case): the profiler's own range, flow arrows and its
# overhead marks.
SKIPPED_CATEGORIES = frozenset({"trace", "ac2g", "fwdbwd", "overhead", "async"})
SKIP = -1
"""What :func:`category_kind` returns for a skipped category."""

# GPU kind -> the kind its rows take when the GPU clock is unusable (analyzers/clock.py).
UNTIMED_OF = {
    Kind.KERNEL: Kind.UNTIMED_KERNEL,
    Kind.MEMCPY: Kind.UNTIMED_MEMCPY,
    Kind.MEMSET: Kind.UNTIMED_MEMSET,
    Kind.GPU_ANNOTATION: Kind.UNTIMED_GPU_ANNOTATION,
}
UNTIMED_KINDS = tuple(UNTIMED_OF.values())


# MTIA writes all device activity under one category: copies are ``dma_*`` rows, and stream
# waits and event records are no device work (a wait would read as compute otherwise).
MTIA_DEVICE_CATEGORY = "mtia_ccp_events"
MTIA_NOT_WORK = frozenset({"event_wait", "event_record"})


def is_mtia_copy(name: str) -> bool:
    """MTIA device rows that move memory (HTA's MTIA memory pattern: ``dma*``)."""
    return name.startswith("dma")


def category_kind(cat: str | None) -> int:
    """The kind (as an int) of a Kineto category in any letter case; :data:`SKIP` for a category
    that is dropped. Callers cache the answer per distinct category string."""
    if cat is None:
        return int(Kind.OTHER)
    low = cat.lower()
    if low in SKIPPED_CATEGORIES:
        return SKIP
    return int(KIND_OF_CATEGORY.get(low, Kind.OTHER))


# Runtime and driver calls that block the host until the GPU has caught up.
SYNC_CALLS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "cudaMemcpy",
        "cudaMemcpy2D",
        "cudaMemset",
        "cuStreamSynchronize",
        "cuCtxSynchronize",
        "cuEventSynchronize",
        "cuMemcpyDtoH_v2",
        "cuMemcpyDtoH",
        "cuMemcpyHtoD_v2",
        # ROCm: hipMemcpyWithStream is PyTorch's blocking copy there
        "hipStreamSynchronize",
        "hipDeviceSynchronize",
        "hipEventSynchronize",
        "hipCtxSynchronize",
        "hipMemcpy",
        "hipMemcpy2D",
        "hipMemcpyWithStream",
        "hipMemset",
        # MTIA runtime
        "synchronizeStream",
        "synchronize",
    }
)

# CUDA / HIP set-up work: context creation, device queries, lazy module loading and the first
# allocations. Before the first GPU work of a trace they are start-up, not a step's cost
# (analyzers/clock.py); in a step they are ordinary calls.
_STARTUP = re.compile(
    r"^(?:cu|cuda|hip)(?:Init|GetDeviceCount|DeviceGetCount|DevicePrimaryCtx\w*|CtxCreate\w*|CtxSetCurrent|"
    r"SetDevice|GetDevice|DeviceGet\w*|GetDeviceProperties\w*|DriverGetVersion|RuntimeGetVersion|"
    r"GetProcAddress\w*|GetExportTable|ModuleLoad\w*|ModuleGetFunction|ModuleGetGlobal\w*|LibraryLoad\w*|"
    r"LibraryGetKernel|KernelGetFunction|FuncGetAttributes?|FuncSetAttribute|Malloc\w*|MemAlloc\w*|"
    r"HostAlloc|HostMalloc|MallocHost|MemHostAlloc|Free|MemFree\w*|StreamCreate\w*|EventCreate\w*|"
    r"DeviceSetLimit|DeviceSetCacheConfig)$"
)
# Calls that put work on the device: the first one ends start-up.
_WORK = re.compile(
    r"^(?:cu|cuda|hip)(?:LaunchKernel\w*|ExtModuleLaunchKernel|ModuleLaunchKernel|LaunchCooperativeKernel\w*|"
    r"GraphLaunch|Memcpy\w*|Memset\w*)$|^runFunction|^enqueueCommand"
)


def is_startup_call(name: str) -> bool:
    """CUDA / HIP context creation, device queries, module loading and allocation calls."""
    return bool(_STARTUP.match(name))


def is_work_call(name: str) -> bool:
    """Runtime calls that put work on the device (launches, copies, sets, graph launches)."""
    return bool(_WORK.match(name))


# Kineto's collective args (``record_param_comms``, NCCL kernels) -> our short keys.
COLLECTIVE_ARG_KEYS = {
    "Collective name": "name",
    "dtype": "dtype",
    "In msg nelems": "in_nelems",
    "Out msg nelems": "out_nelems",
    "Group size": "group_size",
    "Process Group Name": "pg_name",
    "Process Group Description": "pg_desc",
    "Process Group Ranks": "pg_ranks",
    "Seq": "seq",
    "Rank": "rank",
    "In split size": "in_split",
    "Out split size": "out_split",
}
# The allocator samples torch.profiler writes with profile_memory=True.
MEMORY_EVENT = "[memory]"
MEMORY_ARG_KEYS = ("Total Allocated", "Total Reserved", "Device Id", "Device Type", "Addr")

# Step markers: torch.profiler's ranges, else our in-target step markers.
PROFILER_STEP = "ProfilerStep#"
STALLSCOPE_STEP = "stallscope.step#"
STEP_NAME = re.compile(r"^(?:ProfilerStep|stallscope\.step)#(\d+)$")

# The DataLoader's ``__next__`` range that torch.profiler records, and our data-phase range.
DATA_WAIT = "enumerate(DataLoader)"
DATA_PHASE = "stallscope.phase/data"

# CPU ops that copy or fill memory (the CPU timeline's memory part).
CPU_COPY_OPS = frozenset(
    {
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::contiguous",
        "aten::clone",
        "aten::fill_",
        "aten::zero_",
        "aten::_local_scalar_dense",
        "aten::pin_memory",
        "aten::_pin_memory",
    }
)

# Name prefixes a compacted rank keeps: steps, data waits, collectives and our own ranges.
COMPACT_KEEP_PREFIXES = (PROFILER_STEP, DATA_WAIT, "record_param_comms", "c10d::", "nccl:", "gloo:", "stallscope")


def is_sync_call(name: str) -> bool:
    """Runtime calls that block the host until the GPU catches up."""
    return name in SYNC_CALLS


def is_data_wait(name: str) -> bool:
    """The DataLoader's ``__next__`` range that torch.profiler records."""
    return name.startswith(DATA_WAIT)


def is_comm_kernel(name: str) -> bool:
    """Communication kernels (NCCL/RCCL/NVSHMEM/gloo) by name, as HTA classifies them."""
    low = name.lower()
    return "nccl" in low or "rccl" in low or "nvshmem" in low or low.startswith("c10d::") or "gloo" in low


def is_comm_op(name: str) -> bool:
    """CPU-side communication ops (gloo on CPU, c10d wrappers, record_param_comms)."""
    return name == "record_param_comms" or name.startswith(("c10d::", "gloo:", "nccl:")) or "allreduce" in name.lower()


def is_device_to_host(name: str) -> bool:
    """Device-to-host memcpy rows (``Memcpy DtoH (Device -> Pinned)`` and the like)."""
    return "DtoH" in name or "D2H" in name


def short_kernel_name(name: str, width: int = 60) -> str:
    """A kernel name a person can read: no return type, no argument list, templates elided."""
    if name.startswith("void "):
        name = name[5:]
    depth, out = 0, []
    for ch in name.split("(", 1)[0] if not name.startswith("Memcpy") else name:
        if ch == "<":
            if depth == 0:
                out.append("<…>")
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    short = "".join(out).strip() or name
    return short if len(short) <= width else short[: width - 1] + "…"


def anycase(pattern: str) -> Callable[[str], bool]:
    """A test for ``pattern`` (a regular expression written in lower case) anywhere in a text, in
    any ASCII letter case.

    The text is lowercased and searched case-sensitively: on the long C++ kernel names and Python
    frames of real traces that is about 7x faster than ``re.IGNORECASE``, under which the regex
    engine cannot skip ahead to the positions where one of the words can start."""
    if pattern != pattern.lower():
        raise ValueError(f"anycase pattern {pattern!r}: write it in lower case")
    search = re.compile(pattern).search
    return lambda text: search(text.lower()) is not None
