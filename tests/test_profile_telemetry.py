"""The sampler against a scripted NVML: values land in the right columns, refusals become empty cells + one notice."""

from __future__ import annotations

import sys
import time
import types

import pytest

from stallscope.profiler.telemetry import NVML_FIELDS, Sampler


class NVMLError(Exception):
    pass


def fake_pynvml(calls: list) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    nv.NVML_PCIE_UTIL_TX_BYTES, nv.NVML_PCIE_UTIL_RX_BYTES = 0, 1

    def rec(name, value):
        def fn(*args):
            calls.append(name)
            if isinstance(value, Exception):
                raise value
            return value

        return fn

    nv.nvmlInit = rec("init", None)
    nv.nvmlSystemGetDriverVersion = rec("driver", b"580.1")
    nv.nvmlDeviceGetHandleByUUID = lambda u: calls.append(("uuid", u)) or ("handle", u)
    nv.nvmlDeviceGetHandleByIndex = rec("by_index", ("handle", 0))
    nv.nvmlDeviceGetUtilizationRates = rec("util", types.SimpleNamespace(gpu=97, memory=41))
    nv.nvmlDeviceGetMemoryInfo = rec("mem", types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30))
    nv.nvmlDeviceGetClockInfo = lambda h, which: calls.append("clock") or (1980 if which == 1 else 2619)
    nv.nvmlDeviceGetMaxClockInfo = rec("maxclock", 1980)
    nv.nvmlDeviceGetPowerUsage = rec("power", 512_300)
    nv.nvmlDeviceGetEnforcedPowerLimit = rec("limit", 700_000)
    nv.nvmlDeviceGetTemperature = rec("temp", 61)
    nv.nvmlDeviceGetCurrentClocksEventReasons = rec("reasons", 0x4)
    nv.nvmlDeviceGetPcieThroughput = rec("pcie", NVMLError("Not Supported"))
    nv.nvmlDeviceGetName = rec("name", b"NVIDIA H200")
    nv.nvmlDeviceGetUUID = rec("uuidq", b"GPU-1234")
    return nv


def test_sampler_columns_unavailable_metrics_and_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(calls))
    notices: list = []
    s = Sampler(50.0, notices.append)
    assert s.nvml_state == "ok" and s.driver == "580.1"
    s.sample_once()
    assert s.nvml_rows == []  # no CUDA device known yet: nothing to sample
    s.device = (0, "1234")
    for _ in range(3):
        s.sample_once()
    assert len(s.nvml_rows) == 3
    row = dict(zip(NVML_FIELDS, s.nvml_rows[0], strict=True))
    assert row["gpu_util_pct"] == 97 and row["mem_util_pct"] == 41
    assert row["sm_clock_mhz"] == 1980 and row["mem_clock_mhz"] == 2619 and row["sm_clock_max_mhz"] == 1980
    assert row["power_w"] == 512.3 and row["power_limit_w"] == 700.0 and row["temp_c"] == 61
    assert row["mem_used_mb"] == 3072.0 and row["mem_total_mb"] == 81920.0 and row["clock_event_reasons"] == "0x4"
    assert row["pcie_tx_kbps"] is None and row["pcie_rx_kbps"] is None
    assert abs(row["t_ns"] - time.time_ns()) < 10**10
    # a refused metric is tried once, then left empty, with one notice each
    assert calls.count("pcie") == 2
    assert [n for n in notices if "pcie" in n] == [
        "NVML metric pcie_tx_kbps unavailable (Not Supported); its cells are empty",
        "NVML metric pcie_rx_kbps unavailable (Not Supported); its cells are empty",
    ]
    assert s.gpu_info() == {"name": "NVIDIA H200", "uuid": "GPU-1234"}
    assert s.last_gpu_util == 97.0


def test_sampler_without_nvml_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nv.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    notices: list = []
    s = Sampler(25.0, notices.append)
    s.device = (0, None)
    s.sample_once()
    s.sample_once()
    assert s.nvml_state == "unavailable" and s.nvml_rows == []
    assert notices == ["NVML unavailable (NVML Shared Library Not Found): no GPU samples; nvml.csv not written"]
    assert s.host_rows and len(s.host_rows[0]) == 6  # host samples still work


def test_sampler_thread_runs_at_about_the_rate() -> None:
    # Bounded by the time it really ran, not by the 0.5 s asked for: on a loaded machine the
    # sleep can overrun and the thread can be starved. It never samples faster than its rate (one
    # sample at start, then one per period, late ones not caught up), and it keeps sampling.
    s = Sampler(50.0, lambda n: None, nvml_enabled=False)
    t0 = time.monotonic()
    s.start()
    time.sleep(0.5)
    s.stop()
    elapsed = time.monotonic() - t0
    assert 3 <= len(s.host_rows) <= 1 + elapsed * 50.0 + 1
