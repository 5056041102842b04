"""The in-memory model every analyzer reads: a columnar event table per rank, steps, breakdown.

Contract (shared by the loader, the breakdown and every analyzer; add fields, never rename):

* :class:`EventTable` holds one row per trace event in numpy columns. Times are integer
  nanoseconds on the trace's own clock (Kineto microseconds x 1000). ``names`` interns strings.
* :class:`RankData` is one rank: its events, its steps, the per-step breakdown, and the run
  directory's telemetry when present (per-step table, NVML samples, host samples).
* :class:`AnalysisContext` is what ``Analyzer.analyze`` receives.

No torch import here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from stallscope.analyzers.arrays import isin
from stallscope.analyzers.roles import ThreadRoles, thread_roles
from stallscope.analyzers.vocab import GPU_KINDS, MEMORY_EVENT, Kind

__all__ = [
    "TABLE_COLUMNS",
    "AnalysisContext",
    "EventTable",
    "GPU_KINDS",
    "Kind",
    "RankData",
    "Step",
    "StepBreakdown",
    "empty_table",
]


@dataclass
class EventTable:
    """Columnar events of one rank. All arrays have the same length ``n``.

    Columns: ``kind`` int8, ``name`` int32 (index into ``names``), ``ts_ns``/``dur_ns`` int64,
    ``pid``/``tid`` int64 (for GPU rows pid is the device, tid the stream), ``stream`` int32
    (-1 on the CPU), ``device`` int32 (-1 on the CPU), ``correlation`` int64 (-1 when absent),
    ``external_id`` int64 (-1), ``step`` int32 (-1 outside every step), ``flops`` float64 (nan
    when absent), ``bytes`` int64 (-1 when absent).

    Sparse args live in ``extra``: row index -> dict with any of ``input_dims`` (list),
    ``input_types`` (list of dtype strings), ``grid`` / ``block`` (3-lists), ``collective``
    (dict: name, dtype, in_nelems, out_nelems, group_size, pg_name, pg_desc, pg_ranks, seq).

    Derived links (filled by the loader, -1 where none): ``launch_of`` maps a GPU row to the
    runtime row that launched it (correlation id); ``op_of`` maps a GPU row to the innermost
    CPU op that enclosed its launch (External id, else time containment on the launching
    thread).
    """

    names: list[str]
    kind: np.ndarray
    name: np.ndarray
    ts_ns: np.ndarray
    dur_ns: np.ndarray
    pid: np.ndarray
    tid: np.ndarray
    stream: np.ndarray
    device: np.ndarray
    correlation: np.ndarray
    external_id: np.ndarray
    step: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    launch_of: np.ndarray
    op_of: np.ndarray
    extra: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def name_of(self, row: int) -> str:
        """The name of ``row``."""
        return self.names[int(self.name[row])]

    def rows_of_kind(self, *kinds: Kind) -> np.ndarray:
        """Rows of any of ``kinds``, in table order."""
        return np.flatnonzero(isin(self.kind, np.asarray(kinds, dtype=np.int8)))

    def gpu_rows(self) -> np.ndarray:
        """Rows that ran on the GPU (kernels, memcpy, memset)."""
        return self.rows_of_kind(*GPU_KINDS)

    def name_ids_matching(self, predicate: Callable[[str], bool]) -> np.ndarray:
        """Name ids whose string satisfies ``predicate(str) -> bool``."""
        return np.asarray([i for i, s in enumerate(self.names) if predicate(s)], dtype=np.int32)

    def rows_named(self, predicate: Callable[[str], bool], *kinds: Kind) -> np.ndarray:
        """Rows whose name satisfies ``predicate`` (and whose kind is one of ``kinds``, when given)."""
        ids = self.name_ids_matching(predicate)
        mask = isin(self.name, ids)
        if kinds:
            mask &= isin(self.kind, np.asarray(kinds, dtype=np.int8))
        return np.flatnonzero(mask)


# The per-row columns of :class:`EventTable`, in field order (all but ``names`` and ``extra``):
# what a sort or a row selection must carry along.
TABLE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EventTable) if f.name not in ("names", "extra"))


def empty_table(names: list[str] | None = None) -> EventTable:
    """An event table with no rows (a trace with no events, a rank without a trace)."""
    z64 = np.zeros(0, dtype=np.int64)
    return EventTable(
        names=list(names or []),
        kind=np.zeros(0, dtype=np.int8),
        name=np.zeros(0, dtype=np.int32),
        ts_ns=z64.copy(),
        dur_ns=z64.copy(),
        pid=z64.copy(),
        tid=z64.copy(),
        stream=np.zeros(0, dtype=np.int32),
        device=np.zeros(0, dtype=np.int32),
        correlation=z64.copy(),
        external_id=z64.copy(),
        step=np.zeros(0, dtype=np.int32),
        flops=np.zeros(0, dtype=np.float64),
        bytes=z64.copy(),
        launch_of=z64.copy(),
        op_of=z64.copy(),
    )


def step_time_ms(wall_ms: np.ndarray, gpu_ms: np.ndarray) -> np.ndarray:
    """A step's time from steps.csv: the slower of the host's wall time and the GPU's (CUDA
    events; NaN when not measured). A host that runs ahead of the GPU only queues work, so its
    wall time understates the step until the queue fills (a compiled CNN on an H200: host 4.7 ms,
    GPU 8.8 ms a step)."""
    wall = np.asarray(wall_ms, dtype=np.float64)
    gpu = np.asarray(gpu_ms, dtype=np.float64)
    return np.where(np.isfinite(gpu), np.fmax(wall, gpu), wall)


@dataclass
class Step:
    """One step: ``[start_ns, end_ns)`` on the trace clock; ``source`` says how it was found
    (``ProfilerStep``, ``stallscope``, ``whole-trace``)."""

    index: int
    start_ns: int
    end_ns: int
    source: str

    @property
    def wall_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class StepBreakdown:
    """Where one step's wall time went, in milliseconds; the parts sum to ``wall_ms`` (±1 %).

    ``compute_ms`` GPU busy with compute kernels (not overlapped by anything counted before);
    ``memory_ms`` memcpy/memset only; ``comm_exposed_ms`` communication kernels with no compute
    running; ``comm_overlapped_ms`` communication hidden under compute (not part of the sum);
    idle is split into ``data_wait_ms``, ``sync_wait_ms``, ``launch_overhead_ms`` and
    ``host_other_ms``. ``docs/breakdown.md`` defines each.
    """

    step: int
    rank: int
    wall_ms: float
    compute_ms: float = 0.0
    memory_ms: float = 0.0
    comm_exposed_ms: float = 0.0
    comm_overlapped_ms: float = 0.0
    data_wait_ms: float = 0.0
    sync_wait_ms: float = 0.0
    launch_overhead_ms: float = 0.0
    host_other_ms: float = 0.0

    SUMMED = (
        "compute_ms",
        "memory_ms",
        "comm_exposed_ms",
        "data_wait_ms",
        "sync_wait_ms",
        "launch_overhead_ms",
        "host_other_ms",
    )

    def parts(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.SUMMED}


@dataclass
class RankData:
    """One rank's data. ``telemetry`` / ``nvml`` / ``host`` are column dicts (name -> numpy
    array) read from our run directory, or None for a plain trace."""

    rank: int
    events: EventTable
    steps: list[Step]
    breakdown: list[StepBreakdown] = field(default_factory=list)
    telemetry: dict[str, np.ndarray] | None = None
    nvml: dict[str, np.ndarray] | None = None
    host: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    trace_path: str | None = None

    @property
    def roles(self) -> ThreadRoles:
        """The role of each CPU thread (training loop, autograd engine, DataLoader, ...): see
        :mod:`stallscope.analyzers.roles`. Computed once per event table."""
        return thread_roles(self.events)

    def untraced_step_mask(self) -> np.ndarray | None:
        """Rows of ``telemetry`` in the steady state the trace did not see: after the trace window,
        leaving out the export step right after it (it writes the trace). Steps before the window
        are the run's warm-up (``--skip``: compilation, autotuning, allocator growth) and never
        count. None for a plain trace."""
        tel = self.telemetry
        if not tel or "wall_ms" not in tel:
            return None
        wall = np.asarray(tel["wall_ms"], dtype=np.float64)
        step = np.asarray(tel.get("step", np.arange(wall.size)), dtype=np.float64)
        in_window = np.asarray(tel.get("in_window", np.zeros(wall.size)), dtype=np.float64)
        window = (self.meta.get("rank") or {}).get("window") or {}
        mask = np.isfinite(wall) & (in_window == 0) & (step != 0)
        first, last = window.get("first_step"), window.get("last_step")
        if isinstance(first, int):
            mask &= step >= first
        if isinstance(last, int):
            mask &= step != last + 1
        return mask


@dataclass
class AnalysisContext:
    """Everything an analyzer may read. ``meta`` is ``meta.yaml`` (empty for plain traces);
    ``device_name`` the GPU's name when known (selects the peak table); ``notices`` collects
    plain-language notes about what could not be measured (shown once each)."""

    ranks: list[RankData]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    device_name: str | None = None
    notices: list[str] = field(default_factory=list)
    trace_meta: dict[str, Any] = field(default_factory=dict)

    def has(self, requirement: str) -> bool:
        """Whether an input an analyzer may require is present (see ``base.REQUIREMENTS``)."""
        rs = self.ranks
        if requirement == "trace":
            return any(len(r.events) for r in rs)
        if requirement == "gpu":
            return any(len(r.events.gpu_rows()) for r in rs)
        if requirement == "multi-rank":
            return len(rs) > 1
        if requirement == "stacks":
            return any(len(r.events.rows_of_kind(Kind.PYTHON)) for r in rs)
        if requirement == "shapes":
            return any(any("input_dims" in e for e in r.events.extra.values()) for r in rs)
        if requirement == "nvml":
            return any(r.nvml is not None and len(next(iter(r.nvml.values()), ())) for r in rs)
        if requirement == "host":
            return any(r.host is not None for r in rs)
        if requirement == "telemetry":
            return any(r.telemetry is not None for r in rs)
        if requirement == "memory":
            return any(r.events.rows_named(lambda s: s == MEMORY_EVENT).size for r in rs)
        return False
