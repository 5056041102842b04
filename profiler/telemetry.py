"""Background samples: host CPU (process + DataLoader workers) with psutil, GPU with NVML.

One daemon thread samples at ``sample_hz``. Every metric the driver refuses is disabled after
its first failure and reported once as a notice; the cells stay empty ("unavailable").
PCIe throughput takes NVML ~20 ms per direction (the driver samples the counter over that
interval), so it is read every 5 s: on a launch-bound step (~1.3 ms, H200) reading it twice a
second cost the training loop several percent (bench/results/overhead-probe.yaml);
``pcie_period_s`` sets the period (``ProfileOptions.pcie_period_s``, ``STALLSCOPE_PCIE_PERIOD_S``),
0 turns PCIe sampling off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from stallscope.profiler.options import PCIE_PERIOD_S
from stallscope.profiler.runformat import HOST_FIELDS, NVML_FIELDS

__all__ = ["NVML_FIELDS", "HOST_FIELDS", "Sampler", "nvml_handle_for"]

CHILD_RESCAN_S = 1.0
HOST_MIN_INTERVAL_S = 0.05  # 5 clock ticks: a CPU % read over a shorter interval is off by > 20 %


def nvml_handle_for(pynvml: Any, uuid: Optional[str], index: int) -> Any:
    """The NVML handle of the CUDA device the process uses (by UUID, else the visible index)."""
    if uuid:
        for candidate in (uuid, "GPU-" + uuid):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except Exception:
                pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    physical = index
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if parts and index < len(parts) and parts[index].isdigit():
        physical = int(parts[index])
    return pynvml.nvmlDeviceGetHandleByIndex(physical)


class Sampler:
    """Samples host and (once a device is known) NVML metrics into row lists."""

    def __init__(
        self,
        sample_hz: float,
        notice: Callable[[str], None],
        nvml_enabled: bool = True,
        worker_pids: Optional[Callable[[], list[int]]] = None,
        pcie_period_s: float = PCIE_PERIOD_S,
    ) -> None:
        self.period = 1.0 / max(sample_hz, 0.1)
        self.notice = notice
        self.host_rows: list[list] = []
        self.nvml_rows: list[list] = []
        self.last_gpu_util: Optional[float] = None
        self.device: Optional[tuple] = None  # (index, uuid) set from the main thread
        self.driver: Optional[str] = None
        self.nvml_state = "off"  # off | ok | unavailable
        self._pynvml: Any = None
        self._handle: Any = None
        self._dead: set = set()
        self._static: dict[str, Any] = {}
        self._last_pcie = 0.0
        self._pcie_period = pcie_period_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._psutil: Any = None
        self._proc: Any = None
        self._children: dict[int, Any] = {}
        self._last_rescan = 0.0
        self._last_host_sample = -HOST_MIN_INTERVAL_S
        self._tick_hooks: list[Callable[[], None]] = []
        # DataLoader workers come from the loaders' own process lists: no scan of /proc per sample
        self._worker_pids = worker_pids
        if nvml_enabled:
            self._init_nvml()
        else:
            self.nvml_state = "unavailable"
            self.notice("NVML disabled (STALLSCOPE_NVML=0): no GPU samples; nvml.csv not written")
        try:
            import psutil

            self._psutil = psutil
            self._proc = psutil.Process()
            self._proc.cpu_percent(None)
        except Exception as exc:
            self.notice(f"psutil unavailable ({exc.__class__.__name__}): no host CPU samples; host.csv not written")

    def _init_nvml(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._pynvml = pynvml
            self.nvml_state = "ok"
            try:
                drv = pynvml.nvmlSystemGetDriverVersion()
                self.driver = drv.decode() if isinstance(drv, bytes) else str(drv)
            except Exception:
                pass
        except Exception as exc:
            self.nvml_state = "unavailable"
            reason = str(exc).strip() or exc.__class__.__name__
            self.notice(f"NVML unavailable ({reason}): no GPU samples; nvml.csv not written")

    @property
    def host_available(self) -> bool:
        """Whether host samples are taken (psutil is importable)."""
        return self._proc is not None

    def take_rows(self) -> tuple[list, list]:
        """The host and NVML rows sampled since the last call (any thread; a sample appended
        meanwhile is kept for the next call)."""
        host = self.host_rows[:]
        del self.host_rows[: len(host)]
        nvml = self.nvml_rows[:]
        del self.nvml_rows[: len(nvml)]
        return host, nvml

    def on_tick(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the sampler thread after every sample."""
        self._tick_hooks.append(fn)

    def start(self) -> None:
        """Start the sampler thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stallscope-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the sampler thread (waits up to 2 s for it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # never let the sampler die silently or loudly
                self.notice(f"sampler error: {exc.__class__.__name__}: {exc}")
            for fn in self._tick_hooks:
                try:
                    fn()
                except Exception:
                    pass
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def sample_once(self) -> None:
        """Take one host and (once the device is known) one NVML sample."""
        t_ns = time.time_ns()
        if self._proc is not None:
            self._sample_host(t_ns)
        if self.nvml_state == "ok" and self.device is not None:
            self._sample_nvml(t_ns)

    def _sample_host(self, t_ns: int) -> None:
        ps = self._psutil
        now = time.monotonic()
        # psutil's CPU % counts clock ticks (10 ms): over a shorter interval one tick reads as
        # 1,000 % or more. A sample that soon after the last one is skipped; the next one then
        # measures the whole interval since the last kept sample.
        if now - self._last_host_sample < HOST_MIN_INTERVAL_S:
            return
        self._last_host_sample = now
        if now - self._last_rescan >= CHILD_RESCAN_S:
            self._last_rescan = now
            try:
                if self._worker_pids is not None:
                    pids = set(self._worker_pids())
                else:
                    pids = {c.pid for c in self._proc.children(recursive=True)}
            except Exception:  # the main thread changed the iterators meanwhile: next time
                pids = set(self._children)
            for pid in list(self._children):
                if pid not in pids:
                    del self._children[pid]
            for pid in pids - set(self._children):
                try:
                    child = ps.Process(pid)
                    child.cpu_percent(None)
                    self._children[pid] = child
                except ps.Error:
                    pass
        try:
            proc_cpu = self._proc.cpu_percent(None)
            rss_mb = self._proc.memory_info().rss / 2**20
        except ps.Error:
            return
        worker_cpu = []
        for pid, child in list(self._children.items()):
            try:
                worker_cpu.append(child.cpu_percent(None))
            except ps.Error:
                self._children.pop(pid, None)
        self.host_rows.append(
            [
                t_ns,
                round(proc_cpu, 1),
                len(worker_cpu),
                round(sum(worker_cpu), 1),
                round(max(worker_cpu), 1) if worker_cpu else 0.0,
                round(rss_mb, 1),
            ]
        )

    def _read(self, key: str, fn: Callable[[], Any]) -> Any:
        if key in self._dead:
            return None
        try:
            return fn()
        except Exception as exc:
            self._dead.add(key)
            reason = str(exc).strip() or exc.__class__.__name__
            self.notice(f"NVML metric {key} unavailable ({reason}); its cells are empty")
            return None

    def _sample_nvml(self, t_ns: int) -> None:
        nv = self._pynvml
        if self._handle is None:
            index, uuid = self.device  # type: ignore[misc]
            try:
                self._handle = nvml_handle_for(nv, uuid, index)
            except Exception as exc:
                self.nvml_state = "unavailable"
                self.notice(f"NVML has no handle for CUDA device {index} ({exc}); no GPU samples")
                return
            h = self._handle
            self._static["sm_clock_max_mhz"] = self._read(
                "sm_clock_max_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)
            )
            self._static["power_limit_w"] = self._read(
                "power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            )
        h = self._handle
        util = self._read("gpu_util_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        mem = self._read("mem_used_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        # None -> TypeError -> unavailable (_read reports it so)
        reasons = self._read("clock_event_reasons", lambda: reasons_fn(h))  # type: ignore[misc]
        power = self._read("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
        row = [
            t_ns,
            None if util is None else util.gpu,
            None if util is None else util.memory,
            self._read("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            self._read("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            self._static.get("sm_clock_max_mhz"),
            None if power is None else round(power, 1),
            self._static.get("power_limit_w"),
            self._read("temp_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            None if mem is None else round(mem.used / 2**20, 1),
            None if mem is None else round(mem.total / 2**20, 1),
            None if reasons is None else f"0x{int(reasons):x}",
            None,
            None,
        ]
        now = time.monotonic()
        if self._pcie_period > 0 and now - self._last_pcie >= self._pcie_period:
            self._last_pcie = now
            row[12] = self._read("pcie_tx_kbps", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES))
            row[13] = self._read("pcie_rx_kbps", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES))
        if util is not None:
            self.last_gpu_util = float(util.gpu)
        self.nvml_rows.append(row)

    def gpu_info(self) -> Optional[dict]:
        """Name and UUID of the sampled GPU from NVML (None when unknown)."""
        if self._handle is None:
            return None
        nv = self._pynvml
        info: dict = {}
        for key, fn in (("name", nv.nvmlDeviceGetName), ("uuid", nv.nvmlDeviceGetUUID)):
            try:
                v = fn(self._handle)
                info[key] = v.decode() if isinstance(v, bytes) else str(v)
            except Exception:
                pass
        return info
