"""The recorder that lives inside a profiled process: steps, window trace, telemetry, files.

One :class:`Recorder` per process. Hooks (``profiler.hooks``) call its ``on_*`` methods; it
turns them into step boundaries, drives the Kineto window, and writes the rank folder of the
run directory (see docs/run-format.md). Light mode never synchronizes the GPU: per-step GPU
time comes from CUDA events recorded at step boundaries and read with ``query()`` /
``elapsed_time()`` by the sampler thread once the GPU has passed them.
"""
from __future__ import annotations

import atexit
import csv
from array import array
from collections import deque
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from stallscope.profiler import hooks
from stallscope.profiler.telemetry import HOST_FIELDS, NVML_FIELDS, PCIE_PERIOD_S, Sampler

__all__ = ["Config", "Recorder", "STEP_FIELDS", "SOURCE_RANK", "attach_from_env", "active"]

SCHEMA_VERSION = 1
STEP_FIELDS = ["step", "start_ns", "end_ns", "wall_ms", "gpu_ms", "data_wait_ms", "in_window", "source"]
# Higher wins: an explicit call beats the user's prof.step(), which beats optimizer steps, which
# beat outermost module calls.
SOURCE_RANK = {"module": 1, "optimizer": 2, "profiler_step": 3, "api": 4}
FLUSH_PERIOD_S = 5.0
STATUS_PERIOD_S = 0.5
WINDOW_WARMUP_STEPS = 1
# Finished CUDA events are read on the training thread at most this often, in one batch (warm code
# and data; no second thread calling into the CUDA driver while this one launches kernels). On the
# H200 host the light overhead went from +3.2 % to +0.55 % with this change (bench/results/
# profile-overhead.yaml, mlp_session_4), though the two intervals overlap.
POLL_PERIOD_NS = 40_000_000
# The sampler thread reads them only when the training thread has not for this long (a long step,
# a stall, the end of the run), so steps.csv never waits on a paused loop.
POLL_STALE_NS = 1_000_000_000
PHASE_PREFIX = "stallscope.phase/"
CLOCK_MARK = "stallscope.clock_sync"
LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch", "torch.distributed.elastic")

_active: Optional["Recorder"] = None


def active() -> Optional["Recorder"]:
    """The recorder of this process, if one is attached."""
    return _active


@dataclass
class Config:
    """What to record; read from the STALLSCOPE_* environment in a profiled child."""

    run_dir: Path
    skip: int = 5
    steps: int = 5
    sample_hz: float = 25.0
    stack: bool = False
    memory: bool = False
    nvml: bool = True
    autopatch: bool = False
    patch_steps: int = 20
    pcie_period_s: float = PCIE_PERIOD_S
    notices: List[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> "Config":
        env = os.environ

        def num(key: str, default: float, kind: type) -> Any:
            try:
                return kind(env.get(key, default))
            except ValueError:
                return kind(default)

        return cls(
            run_dir=Path(env["STALLSCOPE_RUN_DIR"]),
            skip=max(0, num("STALLSCOPE_SKIP", 5, int)),
            steps=max(1, num("STALLSCOPE_STEPS", 5, int)),
            sample_hz=min(1000.0, max(0.1, num("STALLSCOPE_SAMPLE_HZ", 25.0, float))),
            stack=env.get("STALLSCOPE_STACK") == "1",
            memory=env.get("STALLSCOPE_MEMORY") == "1",
            nvml=env.get("STALLSCOPE_NVML", "1") != "0",
            autopatch=env.get("STALLSCOPE_AUTOPATCH") == "1",
            patch_steps=max(2, num("STALLSCOPE_PATCH_STEPS", 20, int)),
            pcie_period_s=max(0.0, num("STALLSCOPE_PCIE_PERIOD_S", PCIE_PERIOD_S, float)),
        )


def _step_lines(rows: List[list]) -> str:
    """steps.csv lines: numbers and a source name, so no quoting (csv.writer cost ~3x more per row
    on the sampler thread, which shares the GIL with the training loop)."""
    return "".join(
        f"{r[0]},{r[1]},{r[2]},{r[3]:.4f},{'' if r[4] is None else format(r[4], '.4f')},{r[5]:.4f},{r[6]},{r[7]}\n"
        for r in rows)


def _csv_lines(rows: List[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """Only YAML-safe builtins (str subclasses such as TorchVersion become str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


class CsvSink:
    """An append-only CSV file: the header on creation, then whole lines, flushed per append.
    ``lines`` formats rows that need no quoting faster than the csv module."""

    def __init__(self, path: Path, header: List[str], lines: Optional[Callable[[List[list]], str]] = None) -> None:
        self.path = path
        self.header = header
        self.lines = lines
        self.created = False

    def _text(self, rows: List[list]) -> str:
        return (self.lines or _csv_lines)(rows)

    def append(self, rows: List[list]) -> None:
        if not self.created:
            _atomic_write(self.path, (",".join(self.header) + "\n" + self._text(rows)).encode())
            self.created = True
            return
        if rows:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(self._text(rows))

    def reset(self) -> None:
        self.created = False
        try:
            self.path.unlink()
        except OSError:
            pass


def _dump_yaml(data: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except ImportError:  # JSON is valid YAML
        return json.dumps(data, indent=1)


# torchrun sets the first; SLURM's srun and Open MPI's mpirun set the others for each task.
RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def env_int(names: tuple, default: int) -> int:
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
    return argv0 in ("torchrun", "torchrun.exe") or sys.argv[0].replace("\\", "/").endswith(("torch/distributed/run.py", "torch/distributed/launch.py"))


def _is_multiprocessing_child() -> bool:
    try:
        import multiprocessing

        return multiprocessing.parent_process() is not None
    except Exception:
        return False


class Recorder:
    """Per-process state of a profiled run (see module docstring)."""

    def __init__(self, cfg: Config, rank_dir: Optional[Path] = None, origin: str = "bootstrap") -> None:
        import torch

        self.torch = torch
        self.cfg = cfg
        self.origin = origin
        self.pid = os.getpid()
        self.disabled = False
        self.finished = False
        self.origin_ns = time.time_ns()
        self.rank_dir = rank_dir
        self.rank = env_int(RANK_VARS, 0)
        self.local_rank = env_int(LOCAL_RANK_VARS, 0)
        self.world_size = env_int(WORLD_SIZE_VARS, 1)
        self.notices: List[str] = list(cfg.notices)
        self._notice_set = set(self.notices)
        self.rows: List[list] = []  # steps not yet appended to steps.csv (last field: settled)
        self.step_count = 0
        self.walls = array("d")
        self.window_flags = array("b")
        self.last_wall_ms: Optional[float] = None
        self.sinks: dict = {}
        self.index = 0
        self.step_open_ns: Optional[int] = None
        self.step_data_ns = 0
        self.source: Optional[str] = None
        self.primary_optimizer: Optional[int] = None
        self.train_forwards = 0
        self.module_steps_in_training = False
        self.forward_in_step = False
        self.last_forward_end_ns: Optional[int] = None
        self.forward_tokens: List[Any] = []
        self.optimizer_tokens: List[Any] = []
        self.error: Optional[str] = None
        self.module_hooks: Any = None
        self.sampler: Optional[Sampler] = None
        self.started = False
        self._lock = threading.RLock()
        self._last_flush = 0.0
        self._last_status = 0.0
        self._dirty = False
        # window
        self.window_state = "pending"  # pending | active | done | skipped
        self.window_note: Optional[str] = None
        self.window_first: Optional[int] = None
        self._cut_step = -1
        self.window_last: Optional[int] = None
        self.prof: Any = None
        self.step_rf: Any = None
        self.overhead: dict = {}
        self.clock: dict = {}
        self.trace_written = False
        # gpu
        self._cuda_ready = False
        self._cuda_checked_at = -1
        self._no_cuda = torch.version.cuda is None and getattr(torch.version, "hip", None) is None  # a CPU-only build
        self.cuda_device: Optional[int] = None
        self.gpu_props: Optional[dict] = None
        self.open_event: Any = None
        self.pending_events: deque = deque()
        # Steady-state steps (see boundary) are recorded as marks and become rows in _drain_marks:
        # (index, start_ns, end_ns, data_ns, start event, end event).
        self._marks: List[tuple] = []
        self._fast_until = 0  # boundary takes the short path while index < this
        self._polled_ns = 0  # when the training thread last read finished events
        # CUDA graph capture (global mode) forbids event queries from any thread: events are read
        # (by either thread) only while holding this lock, and a capture holds it from begin to end.
        self._capturing = 0
        self._query_lock = threading.Lock()
        self._event_pool: List[Any] = []
        self._stream_key: Any = None
        self._stream: Any = None
        self._nvtx: Any = None
        self._nvtx_checked = False
        # NVTX calls only matter when a tool listens (Nsight Systems sets NVTX_INJECTION64_PATH).
        self.nvtx_on = bool(os.environ.get("NVTX_INJECTION64_PATH") or os.environ.get("NVTX_INJECTION32_PATH")
                            or os.environ.get("STALLSCOPE_NVTX") == "1")
        # Phase ranges (NVTX, Kineto) are made only while someone reads them; one flag, so the
        # hooks on the hot path test one attribute (kept in step with window_state).
        self.phases_on = self.nvtx_on

    # ------------------------------------------------------------------ basics
    def live(self) -> bool:
        return not self.disabled and not self.finished

    def _after_fork_in_child(self) -> None:
        self.disabled = True

    def notice_once(self, message: str) -> None:
        if message not in self._notice_set:
            self._notice_set.add(message)
            self.notices.append(message)

    def _cuda_check_at_boundary(self) -> bool:
        # is_initialized() is re-checked once per step boundary, not on every event
        if self._cuda_checked_at == self.index:
            return False
        self._cuda_checked_at = self.index
        return self._cuda()

    def _cuda(self) -> bool:
        if not self._cuda_ready:
            try:
                self._cuda_ready = bool(self.torch.cuda.is_initialized())
            except Exception:
                self._cuda_ready = False
            if self._cuda_ready:
                try:
                    self.cuda_device = int(self.torch.cuda.current_device())
                    props = self.torch.cuda.get_device_properties(self.cuda_device)
                    uuid = str(getattr(props, "uuid", "") or "")
                    self.gpu_props = {"index": self.cuda_device, "name": props.name, "uuid": uuid or None}
                    if self.sampler is not None:
                        self.sampler.device = (self.cuda_device, uuid or None)
                except Exception as exc:
                    self.notice_once(f"could not identify the CUDA device: {exc}")
        return self._cuda_ready

    # ------------------------------------------------------------------ start
    def _start(self) -> None:
        """First activity: claim the rank folder, start the sampler, hand over to auto-patch."""
        if self.started:
            return
        self.started = True
        try:
            if self.rank_dir is None:
                self.rank_dir = self._claim_rank_dir()
            self.rank_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.disabled = True
            sys.stderr.write(f"stallscope: cannot write to {self.cfg.run_dir} ({exc}); profiling disabled in pid {self.pid}\n")
            return
        self.sampler = Sampler(self.cfg.sample_hz, self.notice_once, nvml_enabled=self.cfg.nvml, worker_pids=hooks.worker_pids,
                               pcie_period_s=self.cfg.pcie_period_s)
        self.sampler.on_tick(self._tick)
        if self._cuda() and self.gpu_props is not None:
            self.sampler.device = (self.gpu_props["index"], self.gpu_props.get("uuid"))
        self.sampler.start()
        if self.cfg.autopatch:
            try:
                from stallscope.fixes import autopatch  # type: ignore[attr-defined]

                autopatch.attach(self.rank_dir, self.cfg.patch_steps)
            except (ImportError, AttributeError) as exc:
                self.notice_once(f"auto-patch unavailable ({exc.__class__.__name__}: {exc}); running without it")
            except Exception as exc:
                self.notice_once(f"auto-patch failed to attach ({exc.__class__.__name__}: {exc}); running without it")

    def _claim_rank_dir(self) -> Path:
        run = self.cfg.run_dir
        run.mkdir(parents=True, exist_ok=True)
        wanted = run / f"rank{self.rank}"
        try:
            wanted.mkdir()
            return wanted
        except FileExistsError:
            extra = run / ".procs" / f"rank{self.rank}-pid{self.pid}"
            extra.mkdir(parents=True, exist_ok=True)
            return extra

    # ------------------------------------------------------------------ events from hooks
    def _activity(self, t_ns: int) -> None:
        if self.step_open_ns is None:
            self._start()
            if self.disabled:
                return
            self._open_step(t_ns)

    def on_data_begin(self) -> tuple:
        t = time.time_ns()
        self._activity(t)
        return (t, self.phase_begin("data"))

    def on_data_end(self, token: tuple) -> None:
        t0, phase = token
        self.phase_end(phase)
        if self.step_open_ns is not None:
            self.step_data_ns += time.time_ns() - t0

    def on_forward_begin(self, inference: bool) -> None:
        t = time.time_ns()
        if not inference and self.source is None and not self.module_steps_in_training:
            self.train_forwards += 1
            if self.train_forwards > hooks.TRAIN_FORWARDS_BEFORE_MODULE_STEPS:
                self.module_steps_in_training = True
                self.notice_once(
                    f"no optimizer step after {hooks.TRAIN_FORWARDS_BEFORE_MODULE_STEPS} training-mode forwards: "
                    "steps are outermost module calls"
                )
        if (inference or self.module_steps_in_training) and self.forward_in_step and (self.source in (None, "module")):
            self.boundary("module", t)
        self._activity(t)
        self.forward_in_step = True
        self.forward_tokens.append(self.phase_begin("forward"))

    def on_forward_end(self) -> None:
        self.last_forward_end_ns = time.time_ns()
        if self.forward_tokens:
            self.phase_end(self.forward_tokens.pop())

    def on_optimizer_begin(self, opt: Any) -> None:
        if self.step_open_ns is None:
            self._activity(time.time_ns())
        if self.phases_on:
            self.optimizer_tokens.append(self.phase_begin("optimizer"))

    def on_optimizer_end(self, opt: Any) -> None:
        if self.optimizer_tokens:
            self.phase_end(self.optimizer_tokens.pop())
        if self.primary_optimizer is None:
            self.primary_optimizer = id(opt)
        if id(opt) == self.primary_optimizer:
            self.boundary("optimizer")

    def on_user_profiler_start(self) -> None:
        note = "the target runs its own torch.profiler (one Kineto session per process): stallscope recorded no window trace; steps follow its prof.step()"
        if self.window_state == "active":
            self._stop_window(keep=True)  # what was traced so far stays; the window ends here
        if self.window_state != "done":
            self.window_state = "skipped"
            self.window_note = note
        self.notice_once(note)

    # ------------------------------------------------------------------ phases
    def _nvtx_mod(self) -> Any:
        if not self._nvtx_checked:
            self._nvtx_checked = True
            try:
                import nvtx

                self._nvtx = (nvtx.push_range, nvtx.pop_range)
            except Exception:
                try:
                    self._nvtx = (self.torch.cuda.nvtx.range_push, self.torch.cuda.nvtx.range_pop)
                except Exception:
                    self._nvtx = None
        return self._nvtx

    def phase_begin(self, name: str) -> Any:
        if not self.phases_on:
            return None
        nv = None
        if self.nvtx_on and (self._cuda_ready or self._cuda()):
            nv = self._nvtx_mod()
            if nv is not None:
                try:
                    nv[0](PHASE_PREFIX + name)
                except Exception:
                    nv = None
        rf = None
        if self.window_state == "active":
            rf = self.torch.autograd.profiler.record_function(PHASE_PREFIX + name)
            rf.__enter__()
        return (nv, rf)

    def phase_end(self, token: Any) -> None:
        if not token:
            return
        nv, rf = token
        if rf is not None:
            try:
                rf.__exit__(None, None, None)
            except Exception:
                pass
        if nv is not None:
            try:
                nv[1]()
            except Exception:
                pass

    # ------------------------------------------------------------------ steps
    def on_capture_begin(self) -> None:
        self._fast_until = 0
        if self._capturing == 0:
            self._query_lock.acquire()
        self._capturing += 1

    def on_capture_end(self) -> None:
        if self._capturing > 0:
            self._capturing -= 1
            if self._capturing == 0:
                self._query_lock.release()

    def _record_event(self) -> Any:
        if self._capturing or self._no_cuda:
            return None
        if not (self._cuda_ready or self._cuda_check_at_boundary()):
            return None
        try:
            ev = self._event_pool.pop() if self._event_pool else self.torch.cuda.Event(enable_timing=True)
            # The current stream by its key, not torch.cuda.current_stream(): that builds a new
            # Stream object per call (two thirds of an event record's 7.5 us on the H200 host).
            C = self.torch._C
            try:
                key = C._cuda_getCurrentStream(C._cuda_getDevice())
            except AttributeError:  # a torch without these: Event.record asks for the stream itself
                ev.record()
                return ev
            if key != self._stream_key:
                self._stream = self.torch.cuda.Stream(stream_id=key[0], device_index=key[1], device_type=key[2])
                self._stream_key = key
            ev.record(self._stream)
            return ev
        except Exception as exc:
            self.notice_once(f"CUDA events unavailable ({exc.__class__.__name__}); gpu_ms left empty")
            return None

    def _poll_events(self, wait: bool = False) -> None:
        if not self._query_lock.acquire(blocking=False):
            return  # a CUDA graph is being captured
        try:
            self._poll_events_locked(wait)
        finally:
            self._query_lock.release()

    def _poll_events_locked(self, wait: bool) -> None:
        # One query for the newest event: when it is done, so is everything recorded before it on
        # its stream, and each step costs one CUDA call (elapsed_time) here instead of two.
        newest_done = False
        if not wait and self.pending_events:
            try:
                newest_done = bool(self.pending_events[-1][2].query())
            except Exception:
                newest_done = False
        while self.pending_events:
            row, start, end = self.pending_events[0]
            try:
                if wait:
                    end.synchronize()
                elif not newest_done and not end.query():
                    return
                row[4] = start.elapsed_time(end)
            except Exception:
                if newest_done and not _event_done(end):
                    return  # recorded on another stream that is still busy: next poll
            row[8] = True
            self.pending_events.popleft()
            if not self.pending_events or self.pending_events[0][1] is not start:
                self._event_pool.append(start)

    def _open_step(self, t_ns: int) -> None:
        self.step_open_ns = t_ns
        self.step_data_ns = 0
        self.forward_in_step = False
        # never start (or stop) Kineto inside a CUDA graph capture: the window moves to the next step
        # Kineto starts one step early (a warmup step, as torch.profiler's schedule has): the first
        # traced step carries the profiler's start-up cost on the host, which would show as GPU gaps.
        if (self.window_state == "pending" and self.index >= self.cfg.skip - WINDOW_WARMUP_STEPS
                and not self._capturing):
            self._start_window()
        if self.window_state == "active" and self.index >= self.cfg.skip:
            self.step_rf = self.torch.autograd.profiler.record_function(f"ProfilerStep#{self.index}")
            self.step_rf.__enter__()
        if self.open_event is None:
            self.open_event = self._record_event()

    def boundary(self, source: str, t_ns: Optional[int] = None) -> None:
        """End the current step (called by hooks and by the public ``step()``)."""
        if self.disabled or self.finished:
            return
        if self.index < self._fast_until and source == self.source:
            # The steady state (same source, no window near, no capture, no listener): one mark per
            # step, made into a row later. Every bytecode here costs, as the step itself leaves our
            # code and data cold: on the H200 host the training thread's share fell from 27 to 16 us.
            t = time.time_ns() if t_ns is None else t_ns
            end_ev = None if self._no_cuda else self._record_event()
            index = self.index
            self._marks.append((index, self.step_open_ns, t, self.step_data_ns, self.open_event, end_ev))
            self.open_event = end_ev
            self.index = index + 1
            self.step_open_ns = t
            self.step_data_ns = 0
            self.forward_in_step = False
            if t - self._polled_ns > POLL_PERIOD_NS and end_ev is not None:
                self._polled_ns = t
                self._settle_events()
            return
        self._drain_marks()
        if source != self.source:  # rare: every step after the first has the same source
            if self.source is not None:
                if SOURCE_RANK[source] < SOURCE_RANK[self.source]:
                    return
                self._reset_for(source)
            self.source = source
            self._update_module_hooks()
        t = time.time_ns() if t_ns is None else t_ns
        if self.step_open_ns is None:
            self._start()
            if self.disabled:
                return
            self._open_step(self.origin_ns)
        self._close_step(t, source)
        if (self.window_state == "active" and self.window_first is not None
                and self.index >= self.window_first + self.cfg.steps and not self._capturing):
            self._stop_window(keep=True)
        self._open_step(t)
        self._fast_until = self._short_path_until()

    def _short_path_until(self) -> int:
        """The step index up to which boundary may take its short path from here."""
        if (self.window_state == "active" or self._capturing or hooks._listeners or self.step_open_ns is None
                or self._cut_step >= self.index or not (self._no_cuda or self._cuda_ready)):
            return 0
        if self.window_state == "pending":
            return self.cfg.skip - WINDOW_WARMUP_STEPS - 1  # _open_step starts the window at the step after
        return sys.maxsize

    def _settle_events(self) -> None:
        """Rows for the marks so far, then the GPU time of every finished step (training thread;
        skipped when the sampler thread holds the lock for a flush: no wait on its file writes)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._drain_marks()
        finally:
            self._lock.release()
        if self.pending_events:
            self._poll_events()

    def _drain_marks(self) -> None:
        """Make the marks of short-path steps into rows (any thread). Always under the lock: a
        caller about to append a row itself waits for a drain in progress, so rows stay in order."""
        with self._lock:
            marks = self._marks
            batch = marks[:len(marks)]
            del marks[:len(batch)]  # one C-level operation: a concurrent append is kept
            if not batch:
                return
            rows, walls, flags, pending, source = self.rows, self.walls, self.window_flags, self.pending_events, self.source
            wall_ms = None
            for index, start, t, data_ns, start_ev, end_ev in batch:
                wall_ms = (t - start) / 1e6
                row = [index, start, t, wall_ms, None, data_ns / 1e6, 0, source, True]
                rows.append(row)
                walls.append(wall_ms)
                flags.append(0)
                if start_ev is not None and end_ev is not None:
                    row[8] = False
                    pending.append((row, start_ev, end_ev))
            self.step_count += len(batch)
            self.last_wall_ms = wall_ms
            self._dirty = True

    def _close_step(self, t: int, source: str) -> None:
        in_window = self.step_rf is not None or self.index == self._cut_step
        if in_window:
            if self.step_rf is not None:
                try:
                    self.step_rf.__exit__(None, None, None)
                except Exception:
                    pass
                self.step_rf = None
            self.window_last = self.index
            if self.window_first is None:
                self.window_first = self.index
        start = self.step_open_ns or t
        wall_ms = (t - start) / 1e6
        data_ms = self.step_data_ns / 1e6
        row = [self.index, start, t, wall_ms, None, data_ms, 1 if in_window else 0, source, True]
        self.rows.append(row)
        self.step_count += 1
        self.walls.append(wall_ms)
        self.window_flags.append(1 if in_window else 0)
        self.last_wall_ms = wall_ms
        end_ev = self._record_event()
        if end_ev is not None and self.open_event is not None:
            row[8] = False
            self.pending_events.append((row, self.open_event, end_ev))
        self.open_event = end_ev
        index = self.index
        self.index += 1
        self.step_open_ns = None
        self._dirty = True
        if hooks._listeners:
            hooks.notify_step(hooks.StepEvent(index, wall_ms, data_ms, in_window))

    def _reset_for(self, source: str) -> None:
        if self.step_count:
            self.notice_once(
                f"step source changed from {self.source} to {source}: the {self.step_count} earlier {self.source} steps were dropped"
            )
        if self.window_state == "active":
            self._stop_window(keep=False)
        if self.window_state == "done" and not self.trace_written:
            self.window_state = "pending"
        elif self.window_state == "done":
            self.window_state = "pending"
            self.trace_written = False
        self.window_first = self.window_last = None
        self._cut_step = -1
        with self._lock:
            self.rows = []
            self.pending_events = deque()
            self.step_count = 0
            self.walls = array("d")
            self.window_flags = array("b")
            sink = self.sinks.pop("steps", None)
            if sink is not None:
                sink.reset()
        self.index = 0

    def _update_module_hooks(self) -> None:
        """Forward hooks cost every step; keep them only while something needs them."""
        if self.module_hooks is None:
            return
        needed = self.source in (None, "module") or self.window_state == "active" or self.nvtx_on
        try:
            self.module_hooks.set_active(needed)
        except Exception as exc:
            self.notice_once(f"module hooks could not be {'added' if needed else 'removed'}: {exc}")

    # ------------------------------------------------------------------ window
    def _profiler_busy(self) -> bool:
        try:
            return bool(self.torch._C._autograd._profiler_enabled())
        except Exception:
            return False

    def _start_window(self) -> None:
        if self._profiler_busy():
            self.window_state = "skipped"
            self.window_note = "another profiler was already running at the window's first step; no window trace"
            self.notice_once(self.window_note)
            return
        tp = self.torch.profiler
        acts = [tp.ProfilerActivity.CPU]
        try:
            if self.torch.cuda.is_available():
                acts.append(tp.ProfilerActivity.CUDA)
        except Exception:
            pass
        t0 = time.perf_counter()
        try:
            prof = tp.profile(
                activities=acts, record_shapes=True, with_flops=True,
                with_stack=self.cfg.stack, profile_memory=self.cfg.memory,
            )
            prof._stallscope_own = True
            prof.start()
        except Exception as exc:
            self.window_state = "skipped"
            self.window_note = f"torch.profiler could not start ({exc.__class__.__name__}: {exc}); no window trace"
            self.notice_once(self.window_note)
            return
        self.prof = prof
        self.window_state = "active"
        self.phases_on = True
        self._update_module_hooks()
        before = time.time_ns()
        with self.torch.autograd.profiler.record_function(CLOCK_MARK):
            pass
        after = time.time_ns()
        self.clock = {"mark_before_ns": before, "mark_after_ns": after}
        self.overhead["window_start_ms"] = round((time.perf_counter() - t0) * 1e3, 3)

    def _stop_window(self, keep: bool) -> None:
        prof, self.prof = self.prof, None
        if self.step_rf is not None:
            self._cut_step = self.index  # its ProfilerStep range is in the trace, cut short
            try:
                self.step_rf.__exit__(None, None, None)
            except Exception:
                pass
            self.step_rf = None
        self.window_state = "done"
        self.phases_on = self.nvtx_on
        self._update_module_hooks()
        if prof is None:
            return
        t0 = time.perf_counter()
        try:
            prof.stop()
            if keep and self.rank_dir is not None:
                self._export(prof)
        except Exception as exc:
            self.notice_once(f"window trace could not be written ({exc.__class__.__name__}: {exc})")
        self.overhead["window_stop_export_ms"] = round((time.perf_counter() - t0) * 1e3, 3)

    def _export(self, prof: Any) -> None:
        assert self.rank_dir is not None
        raw = self.rank_dir / f".trace.{self.pid}.json"
        prof.export_chrome_trace(str(raw))
        try:
            with open(raw, "rb") as src:
                data = src.read()
            self._calibrate_clock(data)
            tmp = self.rank_dir / f".trace.json.gz.{self.pid}.tmp"
            with gzip.open(tmp, "wb", compresslevel=3) as dst:
                dst.write(data)
            os.replace(tmp, self.rank_dir / "trace.json.gz")
            self.trace_written = True
        finally:
            try:
                raw.unlink()
            except OSError:
                pass

    def _calibrate_clock(self, data: bytes) -> None:
        """trace ts (us) -> epoch ns. Kineto writes ts relative to baseTimeNanoseconds; the marker checks it."""
        base = None
        m = re.search(rb'"baseTimeNanoseconds"\s*:\s*(\d+)', data[-4096:]) or re.search(rb'"baseTimeNanoseconds"\s*:\s*(\d+)', data)
        if m:
            base = int(m.group(1))
        measured = None
        mark = re.search(rb'"name"\s*:\s*"' + CLOCK_MARK.encode() + rb'"[^}]*?"ts"\s*:\s*([0-9.]+)', data)
        if mark and self.clock:
            ts_ns = round(float(mark.group(1)) * 1000)
            measured = (self.clock["mark_before_ns"] + self.clock["mark_after_ns"]) // 2 - ts_ns
        if base is not None and (measured is None or abs(measured - base) < 5_000_000):
            offset, method = base, "baseTimeNanoseconds"
        elif measured is not None:
            offset, method = measured, "marker"
        else:
            offset, method = 0, "assumed-epoch"
        self.clock = {
            "trace_to_epoch_ns": int(offset),
            "method": method,
            "base_time_ns": base,
            "marker_residual_ns": None if measured is None else int(measured - offset),
            "marker_window_ns": (self.clock["mark_after_ns"] - self.clock["mark_before_ns"]) if self.clock else None,
        }

    # ------------------------------------------------------------------ files
    def _tick(self) -> None:
        """Sampler-thread housekeeping: read finished CUDA events, heartbeat, periodic flush."""
        self._drain_marks()
        if self.pending_events and time.time_ns() - self._polled_ns > POLL_STALE_NS:
            self._poll_events()
        now = time.monotonic()
        if now - self._last_status >= STATUS_PERIOD_S:
            self._last_status = now
            self.write_status()
        if self._dirty and now - self._last_flush >= FLUSH_PERIOD_S:
            self.flush()

    def write_status(self) -> None:
        if self.rank_dir is None or not self.live():
            return
        last = self.last_wall_ms
        status = {
            "rank": self.rank, "pid": self.pid, "steps": self.index, "last_step_ms": last,
            "gpu_util_pct": self.sampler.last_gpu_util if self.sampler else None,
            "window": self.window_state, "t_ns": time.time_ns(),
        }
        try:
            _atomic_write(self.rank_dir / ".status.json", json.dumps(status).encode())
        except OSError:
            pass

    def window_slowdown(self) -> dict:
        """Median wall time of window steps vs the other steps (the first step, the profiler's warmup
        step and the export step excluded)."""
        self._drain_marks()
        walls, flags = self.walls, self.window_flags
        inside = [w for w, f in zip(walls, flags) if f]
        after_export = (self.window_last + 1) if self.window_last is not None else None
        warmup = range(self.window_first - WINDOW_WARMUP_STEPS, self.window_first) if self.window_first else range(0)
        outside = [w for i, (w, f) in enumerate(zip(walls, flags))
                   if not f and i != 0 and i != after_export and i not in warmup]
        out = {"window_steps": len(inside), "baseline_steps": len(outside)}
        if inside and outside:
            med_in, med_out = statistics.median(inside), statistics.median(outside)
            out["window_step_median_ms"] = round(med_in, 4)
            out["light_step_median_ms"] = round(med_out, 4)
            out["window_slowdown_pct"] = round((med_in / med_out - 1) * 100, 2) if med_out > 0 else None
        else:
            out["window_slowdown_pct"] = None
        return out

    def rank_info(self, final: bool = True) -> dict:
        self._drain_marks()
        torch = self.torch
        info: dict = {
            "schema_version": SCHEMA_VERSION,
            "rank": self.rank,
            "local_rank": self.local_rank,
            "world_size": self.world_size,
            "pid": self.pid,
            "argv": list(sys.argv),
            "executable": sys.executable,
            "host": socket.gethostname(),
            "python": sys.version.split()[0],
            "torch": str(torch.__version__),
            "cuda": None if getattr(torch.version, "cuda", None) is None else str(torch.version.cuda),
            "gpu": None,
            "driver": self.sampler.driver if self.sampler else None,
            "nvml": self.sampler.nvml_state if self.sampler else "off",
            "step_source": self.source or ("whole-run" if self.step_count else None),
            "steps": self.step_count,
            "window": {
                "skip": self.cfg.skip, "steps": self.cfg.steps, "state": self.window_state,
                "first_step": self.window_first, "last_step": self.window_last,
                "trace": "trace.json.gz" if self.trace_written else None, "note": self.window_note,
                "stack": self.cfg.stack, "memory": self.cfg.memory,
            },
            "clock": {**(self.clock if "trace_to_epoch_ns" in self.clock else {"trace_to_epoch_ns": None, "method": None}),
                      **self._rank_clock()},
            "overhead": {**self.overhead, **(self.window_slowdown() if final else {})},
            "error": self.error,
            "notices": list(self.notices),
        }
        if self.gpu_props:
            gpu = dict(self.gpu_props)
            if self.sampler is not None:
                nv = self.sampler.gpu_info() or {}
                gpu["uuid"] = nv.get("uuid") or gpu.get("uuid")
                gpu["name"] = nv.get("name") or gpu.get("name")
            info["gpu"] = gpu
        return info

    def _sink(self, name: str, header: List[str], lines: Optional[Callable[[List[list]], str]] = None) -> "CsvSink":
        sink = self.sinks.get(name)
        if sink is None:
            assert self.rank_dir is not None
            sink = self.sinks[name] = CsvSink(self.rank_dir / f"{name}.csv", header, lines)
        return sink

    def _rank_clock(self) -> dict:
        mod = sys.modules.get("stallscope.profiler.distclock")
        res = mod.result() if mod is not None else {}
        if not res:
            return {}
        out = {"rank_offset_ns": res.get("rank_offset_ns"), "rank_offset_spread_ns": res.get("spread_ns"),
               "rank_offset_method": res.get("method")}
        if res.get("error"):
            out["rank_offset_error"] = res["error"]
        return out

    def flush(self, final: bool = False) -> None:
        """Append the new rows to steps/host/nvml.csv (whole lines only) and rewrite rank.yaml atomically.

        Only settled steps (GPU time known or unknowable) are written, so each row is written once;
        the cost of a flush is proportional to what is new, not to the length of the run.
        """
        if self.rank_dir is None:
            return
        self._drain_marks()
        with self._lock:
            self._last_flush = time.monotonic()
            self._dirty = False
            d = self.rank_dir
            try:
                settled = 0
                for row in self.rows:
                    if not row[8]:
                        break
                    settled += 1
                if settled or final:
                    ready = self.rows[:settled]
                    del self.rows[:settled]  # one C-level operation: a concurrent append is kept
                    self._sink("steps", STEP_FIELDS, _step_lines).append(ready)
                if self.sampler is not None:
                    host = self.sampler.host_rows[:]
                    del self.sampler.host_rows[: len(host)]
                    nvml = self.sampler.nvml_rows[:]
                    del self.sampler.nvml_rows[: len(nvml)]
                    if self.sampler._proc is not None:
                        self._sink("host", HOST_FIELDS).append(host)
                    if nvml:
                        self._sink("nvml", NVML_FIELDS).append(nvml)
                _atomic_write(d / "rank.yaml", _dump_yaml(_plain(self.rank_info(final=final))).encode())
            except Exception as exc:
                sys.stderr.write(f"stallscope: could not write {d}: {exc}\n")

    # ------------------------------------------------------------------ end
    def finish(self, error: Optional[str] = None) -> None:
        """Close the open step, stop the window, write every file. Safe to call more than once."""
        if self.finished or self.disabled or os.getpid() != self.pid:
            return
        self._drain_marks()
        if error and not self.error:
            self.error = error
        if self.step_open_ns is None and not self.step_count and not self.started:
            if is_launcher_process() or _is_multiprocessing_child():
                self.finished = True
                return
        try:
            self._finish_steps()
        finally:
            self.finished = True
            if self.sampler is not None:
                self.sampler.stop()
            try:
                self.torch.cuda.is_initialized() and self._poll_events(wait=True)
            except Exception:
                pass
            self.flush(final=True)
            if self.rank_dir is not None:
                try:
                    (self.rank_dir / ".status.json").unlink()
                except OSError:
                    pass

    def _finish_steps(self) -> None:
        if self.source is None and not self.step_count:
            # No boundary ever: the whole run (from torch import or first activity) is one step.
            self._start()
            if self.disabled:
                return
            start = self.step_open_ns or self.origin_ns
            self.step_open_ns = start
            self.notice_once(
                "no step found (no optimizer step, inference module call, prof.step() or stallscope.step()): the run is one step"
            )
            self._close_step(time.time_ns(), "whole-run")
        elif self.source == "module" and self.forward_in_step and self.step_open_ns is not None:
            self._close_step(self.last_forward_end_ns or time.time_ns(), "module")
        if self.window_state == "active":
            self.notice_once(f"the run ended inside the trace window (after step {self.index - 1}); the trace holds the steps that ran")
            self._stop_window(keep=True)
        elif self.window_state == "pending" and self.step_count:
            self.window_note = f"the run had {self.step_count} steps, fewer than --skip {self.cfg.skip}: no window trace"
            self.notice_once(self.window_note)


def _excepthook_chain(rec: Recorder) -> None:
    previous = sys.excepthook

    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            text = str(exc).strip().splitlines()
            rec.error = f"{exc_type.__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]
        except Exception:
            pass
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _sigterm_handler(rec: Recorder) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return  # the target handles SIGTERM itself; atexit still flushes if it exits
    except Exception:
        return

    def on_term(signum: int, frame: Any) -> None:
        rec.finish(error="terminated by SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)


def _event_done(event: Any) -> bool:
    try:
        return bool(event.query())
    except Exception:
        return True  # a broken event never completes: settle its row without gpu_ms


def attach(cfg: Config, rank_dir: Optional[Path] = None, origin: str = "bootstrap") -> Recorder:
    """Create this process's recorder, install the hooks, and arrange the flush at exit."""
    global _active
    if _active is not None and _active.live():
        return _active
    rec = Recorder(cfg, rank_dir=rank_dir, origin=origin)
    _active = rec
    hooks.install(rec)
    try:  # ranks' clock offsets, measured right after init_process_group (profiler/distclock.py)
        from stallscope.profiler import distclock

        distclock.install()
    except Exception as exc:
        rec.notice_once(f"rank clock alignment not installed ({exc.__class__.__name__}: {exc})")
    if origin == "bootstrap":
        atexit.register(rec.finish)
        _excepthook_chain(rec)
        _sigterm_handler(rec)

    os.register_at_fork(after_in_child=rec._after_fork_in_child)
    return rec


def attach_from_env() -> Optional[Recorder]:
    """Entry point of the injected bootstrap (called right after ``import torch`` finished)."""
    if not os.environ.get("STALLSCOPE_RUN_DIR"):
        return None
    return attach(Config.from_env())


def copy_tree_files(src: Path, dst: Path) -> None:
    """Move a rank folder's files into ``dst`` (used when the parent swaps rank owners)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        shutil.move(str(p), str(dst / p.name))
