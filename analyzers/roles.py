"""Thread roles: which CPU thread of a rank is the training loop, which the autograd engine, ...

Every analyzer that reads host work asks here for the thread that plays the role it needs.
"The thread with the most ops" is not the loop: with CUDA tensors the autograd engine runs the
backward on a thread of its own, and that thread records more ops than the loop in every
training trace that has one.

A thread's role comes from what it recorded (the table keeps no thread names; Kineto's
``thread_name`` metadata names only some threads, e.g. ``pt_autograd_0``, and not always the
same way twice):

* ``loop``: holds the step ranges (``ProfilerStep#N``, ``stallscope.step#N``). Without steps:
  the thread with the most loop marks (``Optimizer.step#``, ``Optimizer.zero_grad#``,
  ``stallscope.phase/``, ``nn.Module:`` forward roots), else the one whose top-level CPU work
  outside backward functions spans the most wall time (the forward runs there, not on the
  engine's thread), leaving out the comm / pin-memory / compile / DataLoader threads. At most
  one thread is the loop.
* ``autograd``: not the loop, and backward functions (``autograd::engine::evaluate_function:``,
  ``*Backward*``, ``torch::autograd::AccumulateGrad`` top-level ops) fill most of its top-level
  time; the rest is what they trigger (DDP's reducer copies buckets to the grads there). On
  the CPU the engine runs the backward on the calling thread: that thread is the loop.
* ``comm``: no step range, top-level time mostly collectives (``nccl:*``, ``gloo:*``,
  ``c10d::*``, ``record_param_comms``): gloo's run-loop threads, a collective issued off the loop.
* ``pin_memory``: top-level time mostly ``aten::pin_memory`` / ``aten::_pin_memory`` /
  ``aten::is_pinned``: the DataLoader's pin-memory thread (when the profiler records its ops).
* ``dataloader``: ``enumerate(DataLoader)#...__next__`` ranges or ``torch/utils/data`` Python
  frames off the loop: a thread that fetches batches for the loop (a prefetcher).
* ``compile``: top-level time mostly torch.compile's compile ranges (``compile_fx_inner``,
  ``entire_frame_compile``, ...) or ``torch/_inductor`` / ``torch/_dynamo`` Python frames.
* ``other``: everything else, e.g. threads with only CUDA runtime calls (``cudaEventQuery``
  polling: a step timer, the NCCL watchdog, a pin-memory thread whose ops were not recorded).

"Mostly" is more than :data:`MOSTLY` of the thread's top-level time. Old traces (PyTorch <= 1.9)
have the same names, less the ``evaluate_function`` wrapper; a trace without any of these marks
gets ``loop`` on its busiest thread.

No torch import.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stallscope.analyzers.arrays import isin, unique
from stallscope.analyzers.vocab import DATA_WAIT, PROFILER_STEP, STALLSCOPE_STEP, Kind, is_comm_op

if TYPE_CHECKING:  # the model imports this module for RankData.roles
    from stallscope.analyzers.model import EventTable

__all__ = ["MOSTLY", "ROLES", "ThreadRoles", "thread_roles"]

ROLES = ("loop", "autograd", "dataloader", "pin_memory", "comm", "compile", "other")

# A thread that is not the loop gets the role of the work that fills more than half of its
# top-level time: a thread serves one purpose, and what it does most names it.
MOSTLY = 0.5

# Rows that a CPU thread records (Kind.OTHER holds GPU-side sync markers and the profiler's own
# range on made-up pids, so it names no thread).
_THREAD_KINDS = (Kind.CPU_OP, Kind.RUNTIME, Kind.ANNOTATION, Kind.PYTHON)
_TOP_KINDS = (Kind.CPU_OP, Kind.ANNOTATION)
_LOOP_MARKS = ("Optimizer.step#", "Optimizer.zero_grad#", "stallscope.phase/", "nn.Module: ")
_PIN_OPS = frozenset({"aten::pin_memory", "aten::_pin_memory", "aten::is_pinned"})
_COMPILE = re.compile(
    r"^(entire_frame_compile|_compile\.compile_inner|compile_fx_inner|inductor_compile|backend_compile|"
    r"create_aot_dispatcher_function|OutputGraph\.call_user_compiler|compile_attempt_\d+|"
    r"CompiledFunction\.backward_compile)( \(dynamo_timed\))?$|torch/_inductor/|torch/_dynamo/"
)


@dataclass(frozen=True)
class ThreadRoles:
    """The role of every CPU thread of one rank's event table.

    ``loop`` is the tid of the training-loop thread (None when the table has no CPU thread);
    ``by_tid`` maps every CPU thread with events to one of :data:`ROLES`; ``evidence`` says in
    one line per thread why it got its role.
    """

    loop: int | None
    by_tid: dict[int, str]
    evidence: dict[int, str]

    def role(self, tid: int) -> str:
        """The role of thread ``tid`` (``other`` when the thread is unknown)."""
        return self.by_tid.get(int(tid), "other")

    def tids(self, role: str) -> list[int]:
        """The threads that play ``role``, in ascending tid order."""
        return sorted(t for t, r in self.by_tid.items() if r == role)


def _is_step(name: str) -> bool:
    return name.startswith((PROFILER_STEP, STALLSCOPE_STEP))


def _is_backward(name: str) -> bool:
    # PyTorch <= 1.9 writes the backward functions without the evaluate_function wrapper
    # (``CudnnConvolutionBackward``, ``torch::autograd::AccumulateGrad``)
    return name.startswith(("autograd::engine", "torch::autograd::")) or "Backward" in name


def _is_data(name: str) -> bool:
    return name.startswith(DATA_WAIT) or "torch/utils/data/" in name


@dataclass
class _Thread:
    """What one thread recorded, in the measures the rules read (nanoseconds)."""

    tid: int
    rows: int  # rows of the thread kinds
    steps: int  # step ranges
    marks: int  # loop marks without the steps
    top_ns: int  # wall time its top-level CPU ops and annotations cover
    span_ns: int  # the same with runtime calls (a thread with runtime calls only)
    backward_ns: int  # top-level time in backward functions
    comm_ns: int
    pin_ns: int
    data_ns: int  # DataLoader ranges and torch/utils/data frames
    compile_ns: int
    data_marks: int
    runtime_names: list[str]


def _top_level(ts: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Mask of the rows (sorted by start, longer first) that no earlier row encloses."""
    if not ts.size:
        return np.zeros(0, dtype=bool)
    reach = np.maximum.accumulate(end)
    top = np.ones(ts.size, dtype=bool)
    top[1:] = ts[1:] >= reach[:-1]
    return top


def _covered(ts: np.ndarray, end: np.ndarray) -> int:
    """Wall time the intervals (sorted by start) cover together."""
    if not ts.size:
        return 0
    reach = np.maximum.accumulate(end)
    new = np.ones(ts.size, dtype=bool)
    new[1:] = ts[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], ts.size) - 1
    return int((reach[last] - ts[first]).sum())


def _measure(t: EventTable, tid: int, rows: np.ndarray, ids: dict[str, np.ndarray]) -> _Thread:
    name = t.name[rows]
    kind = t.kind[rows]
    top_rows = rows[isin(kind, np.asarray(_TOP_KINDS, dtype=np.int8))]
    order = np.lexsort((-t.dur_ns[top_rows], t.ts_ns[top_rows]))
    top_rows = top_rows[order]
    ts, end = t.ts_ns[top_rows], t.ts_ns[top_rows] + t.dur_ns[top_rows]
    top = _top_level(ts, end)
    roots = top_rows[top]
    root_dur = t.dur_ns[roots]

    def root_ns(key: str) -> int:
        return int(root_dur[isin(t.name[roots], ids[key])].sum())

    # DataLoader and compile work may sit under a user's own range: count the rows at any depth
    def any_ns(key: str, kinds: tuple[Kind, ...]) -> int:
        sel = rows[isin(name, ids[key]) & isin(kind, np.asarray(kinds, dtype=np.int8))]
        sel = sel[np.argsort(t.ts_ns[sel], kind="stable")]
        return _covered(t.ts_ns[sel], t.ts_ns[sel] + t.dur_ns[sel])

    span_rows = rows[kind != Kind.PYTHON]
    span_rows = span_rows[np.argsort(t.ts_ns[span_rows], kind="stable")]
    runtime = rows[kind == Kind.RUNTIME]
    return _Thread(
        tid=tid,
        rows=int(rows.size),
        steps=int(isin(name, ids["step"]).sum()),
        marks=int(isin(name, ids["mark"]).sum()),
        top_ns=_covered(ts, end),
        span_ns=_covered(t.ts_ns[span_rows], t.ts_ns[span_rows] + t.dur_ns[span_rows]),
        backward_ns=root_ns("backward"),
        comm_ns=root_ns("comm"),
        pin_ns=root_ns("pin"),
        data_ns=any_ns("data", (Kind.CPU_OP, Kind.ANNOTATION, Kind.PYTHON)),
        compile_ns=any_ns("compile", (Kind.CPU_OP, Kind.ANNOTATION, Kind.PYTHON)),
        data_marks=int(isin(name, ids["data"]).sum()),
        runtime_names=sorted({t.names[int(i)] for i in unique(t.name[runtime])[:3]}) if runtime.size else [],
    )


def _role_off_loop(th: _Thread, loop_known: bool) -> tuple[str, str]:
    """The role of a thread that is not the loop, with its one line of evidence. ``loop_known``:
    another thread holds the steps or the optimizer (without, the loop itself may be the thread
    with a few DataLoader ranges)."""
    top = th.top_ns
    if top and th.backward_ns > MOSTLY * top:
        return "autograd", f"backward functions fill {100 * th.backward_ns / top:.0f}% of its top-level time"
    for role, ns, what in (
        ("comm", th.comm_ns, "collectives (nccl/gloo/c10d)"),
        ("pin_memory", th.pin_ns, "aten::pin_memory"),
        ("compile", th.compile_ns, "torch.compile's compile ranges"),
        ("dataloader", th.data_ns, "DataLoader fetches"),
    ):
        if top and ns > MOSTLY * top:
            return role, f"{what} fill {100 * ns / top:.0f}% of its top-level time"
    if loop_known and th.data_marks and not th.steps:
        return "dataloader", f"{th.data_marks} DataLoader ranges and no step range"
    if not top and th.runtime_names:
        return "other", f"only CUDA runtime calls ({', '.join(th.runtime_names)}): no ops recorded on it"
    return "other", "no step range and no role's marks"


def _classify(t: EventTable) -> ThreadRoles:
    cpu = np.flatnonzero(isin(t.kind, np.asarray(_THREAD_KINDS, dtype=np.int8)))
    if not cpu.size:
        return ThreadRoles(loop=None, by_tid={}, evidence={})
    ids = {
        "step": t.name_ids_matching(_is_step),
        "mark": t.name_ids_matching(lambda s: s.startswith(_LOOP_MARKS)),
        "backward": t.name_ids_matching(_is_backward),
        "comm": t.name_ids_matching(is_comm_op),
        "pin": t.name_ids_matching(lambda s: s in _PIN_OPS),
        "data": t.name_ids_matching(_is_data),
        "compile": t.name_ids_matching(lambda s: bool(_COMPILE.search(s))),
    }
    tids = t.tid[cpu]
    order = np.argsort(tids, kind="stable")
    uniq, first = np.unique(tids[order], return_index=True)
    groups = np.split(cpu[order], first[1:])
    threads = [_measure(t, int(tid), rows, ids) for tid, rows in zip(uniq, groups, strict=True)]

    by_tid: dict[int, str] = {}
    evidence: dict[int, str] = {}
    loop: _Thread | None = None
    stepped = [th for th in threads if th.steps]
    if stepped:
        loop = max(stepped, key=lambda th: (th.steps, th.top_ns, -th.tid))
        why = f"holds {loop.steps} step ranges"
    else:
        marked = [th for th in threads if th.marks]
        if marked:
            loop = max(marked, key=lambda th: (th.marks, th.top_ns, -th.tid))
            why = f"no step range in the trace; holds {loop.marks} optimizer / phase / forward ranges"
    for th in threads:
        if th is loop:
            continue
        by_tid[th.tid], evidence[th.tid] = _role_off_loop(th, loop is not None)
        if th.steps:
            evidence[th.tid] += f" (holds {th.steps} step ranges, fewer than the loop)"
    if loop is None:
        free = [th for th in threads if by_tid[th.tid] in ("other", "autograd") and th.span_ns]
        if free:
            loop = max(free, key=lambda th: (th.top_ns - th.backward_ns, th.span_ns, -th.tid))
            why = (
                "no step or optimizer range in the trace: the thread whose top-level ops outside "
                "backward functions span the most wall time"
            )
    if loop is not None:
        by_tid[loop.tid], evidence[loop.tid] = "loop", why
    return ThreadRoles(loop=loop.tid if loop else None, by_tid=by_tid, evidence=evidence)


_CACHE: dict[int, tuple[int, ThreadRoles]] = {}


def thread_roles(events: EventTable) -> ThreadRoles:
    """The thread roles of ``events`` (a pure function of the table, computed once per table)."""
    key = id(events)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == len(events):
        return hit[1]
    roles = _classify(events)
    if hit is None:
        weakref.finalize(events, _CACHE.pop, key, None)
    _CACHE[key] = (len(events), roles)
    return roles
