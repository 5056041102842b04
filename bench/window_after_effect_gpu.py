"""Does a trace window slow the rest of the run? (issue 22) Interleaved fresh processes, one YAML.

Two parts in one file:

``worker``: one training run in one fresh process. Synthetic data on the GPU (no DataLoader), so
only the GPU side varies. 80 steps (``--steps``); a CUDA event at every step boundary; the figure
is the median of the last 40 steps (``--measure``). ``--mode window`` runs a ``torch.profiler``
window over steps 5-10 (``--window-start``, ``--window-steps``) inside the script, with options
for each hypothesis (activities, record_shapes/with_stack/profile_memory/with_flops, calls after
the window stops, an environment variable set just before the stop). Diagnostics, all taken
where they cannot touch the measured steps or outside them:

* ``nvml``: SM/memory clocks, clock-event (throttle) reasons, power and temperature read through
  NVML under load at step 3 (before the window) and at the second-to-last step;
* ``threads``: CPU time each thread of the process used between step 12 and the last step
  (a CUPTI worker thread left busy after the window would show here);
* ``diag``: after the last measured step, ``--diag-steps`` steps each queued behind a long GPU
  sleep, so the GPU runs the whole step from a backlog: ``gpu_backlog_ms`` is the GPU's own time
  for a step (no launch gaps) and ``host_enqueue_ms`` the host's time to issue it. A slowdown
  that moves ``gpu_backlog_ms`` is on the GPU; one that moves only ``host_enqueue_ms`` (and the
  step time) is host-side launch cost;
* ``--kernels``: kernel names and counts per step from the window trace and from a 2-step
  ``--tail-trace`` taken after everything else (is the cuDNN algorithm choice the same?);
* ``--probe-steps K``: host costs read in the same process before the first step and after the
  last: the host time per kernel launch (a one-element add, smallest of 30 batches of 500; an
  attached CUPTI raises it) and the host time of a forward and backward issued behind a GPU sleep
  (smallest of K; meaningful only while the launch queue holds the whole step).

A model name may carry a batch or image size: ``vit_small-b384``, ``cnn_graphs-b256-px224``.

``drive``: runs workers for ``--models`` x ``--conditions`` in rounds (every condition once per
round, order shuffled per round, seeded), ``--runs`` rounds or until ``--deadline-s``. The next
worker imports and builds its model on the CPU while the current one runs, and touches CUDA
only when the current one has finished its GPU phase (a go/done file pair), so process start-up
costs no device time. ``stallscope`` conditions run the worker in ``plain`` mode under
``python3 -m stallscope.cli profile --skip W --steps N`` (``--window-start``, ``--window-steps``). Writes
``$OUT/<name>.yaml`` (date, GPU, driver, torch, command; per model and condition: run medians,
spread, ``after_window_pct`` = median of run medians vs plain, with a bootstrap 95 % interval
from ``stallscope.analyzers.stats``; the diagnostics' medians) after every run, and every run's
raw record to ``$OUT/<name>.runs.jsonl``.

    python3 bench/window_after_effect_gpu.py drive --models resnet50,gpt2 --runs 5 --out $OUT
    python3 bench/window_after_effect_gpu.py drive --conditions plain,window,window_teardown ...
    python3 bench/window_after_effect_gpu.py worker --model resnet50 --mode window --json r.json
    python3 bench/window_after_effect_gpu.py drive --smoke --out /tmp/x   # CPU, tiny model: the plumbing only
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MODELS = ("resnet50", "convnext_tiny", "efficientnet_b0", "vit_small", "gpt2", "cnn_graphs")
DEFAULT_MODELS = "resnet50,convnext_tiny,efficientnet_b0,vit_small,gpt2,cnn_graphs"
# A model name may carry overrides of its batch and image size: "vit_small-b384", "cnn_graphs-b256-px224".
VARIANT_KEYS = {"b": "batch", "px": "size"}


def split_model(name: str) -> tuple[str, dict]:
    """("vit_small-b384") -> ("vit_small", {"batch": 384}); SystemExit on an unknown base or override."""
    base, *mods = name.split("-")
    if base not in MODELS + ("tiny",):
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)} (with -bN / -pxN overrides)")
    over: dict = {}
    for mod in mods:
        key = mod.rstrip("0123456789")
        if key not in VARIANT_KEYS or key == mod:
            raise SystemExit(f"unknown override {mod!r} in {name!r}: use -bN (batch) or -pxN (image size)")
        over[VARIANT_KEYS[key]] = int(mod[len(key):])
    return base, over

# name -> (mode, worker flags, environment). Environment variables are set in the worker's
# environment at its start (before torch initialises CUDA or CUPTI), as stallscope's bootstrap would.
CONDITIONS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "plain": ("plain", [], {}),
    "window": ("window", [], {}),
    "window_teardown": ("window", [], {"TEARDOWN_CUPTI": "1"}),
    "window_nolazy": ("window", [], {"DISABLE_CUPTI_LAZY_REINIT": "1"}),
    "window_teardown_nolazy": ("window", [], {"TEARDOWN_CUPTI": "1", "DISABLE_CUPTI_LAZY_REINIT": "1"}),
    "window_teardown_late": ("window", ["--setenv-before-stop", "TEARDOWN_CUPTI=1"], {}),
    "window_cpu": ("window", ["--activities", "cpu"], {}),
    "window_full": ("window", ["--record-shapes", "--with-stack", "--profile-memory", "--with-flops"], {}),
    "window_stallscope_opts": ("window", ["--record-shapes", "--with-flops"], {}),
    "window_sync": ("window", ["--after-stop", "sync,empty_cache,gc"], {}),
    "window_teardown_sync": ("window", ["--after-stop", "sync,empty_cache,gc"], {"TEARDOWN_CUPTI": "1"}),
    "window_noexport": ("window", ["--no-export"], {}),
    "plain_nobench": ("plain", ["--no-cudnn-benchmark"], {}),
    "window_nobench": ("window", ["--no-cudnn-benchmark"], {}),
    "window_teardown_nobench": ("window", ["--no-cudnn-benchmark"], {"TEARDOWN_CUPTI": "1"}),
    "stallscope": ("stallscope", [], {}),
    "stallscope_teardown": ("stallscope", [], {"TEARDOWN_CUPTI": "1"}),
    "stallscope_nocompact": ("stallscope", [], {"STALLSCOPE_COMPACT": "0"}),
}


# ----------------------------------------------------------------------------------- worker
def _build(model_name: str, device: str):
    """(model built on the CPU, batch info with the name's overrides applied). No CUDA touched here."""
    base, over = split_model(model_name)
    model, info = _build_base(base)
    return model, {**info, **over}


def _build_base(model_name: str):
    import torch

    if model_name == "tiny":  # --smoke only
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
        return model, dict(kind="image", batch=4, size=16, classes=10)
    if model_name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config()  # 124 M, from the config: nothing downloaded
        model = GPT2LMHeadModel(cfg)
        return model, dict(kind="lm", batch=16, seq=512, vocab=cfg.vocab_size)
    if model_name == "cnn_graphs":
        layers: list = []
        ch = 3
        for out, stride in ((64, 2), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1)):
            layers += [torch.nn.Conv2d(ch, out, 3, stride=stride, padding=1, bias=False), torch.nn.BatchNorm2d(out),
                       torch.nn.ReLU(inplace=True)]
            ch = out
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(ch, 1000)]
        return torch.nn.Sequential(*layers), dict(kind="image", batch=128, size=112, classes=1000, compile=True)
    import timm

    name = {"vit_small": "vit_small_patch16_224"}.get(model_name, model_name)
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    return model, dict(kind="image", batch=128, size=224, classes=1000)


def _nvml_read() -> dict:
    try:
        import pynvml as nv

        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        out = {"sm_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
               "mem_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)}
        try:
            reasons = nv.nvmlDeviceGetCurrentClocksEventReasons(h)
        except Exception:
            reasons = nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)
        out["event_reasons"] = hex(int(reasons))
        try:
            out["power_w"] = round(nv.nvmlDeviceGetPowerUsage(h) / 1000.0, 1)
            out["temp_c"] = nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
        except Exception:
            pass
        return out
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def _threads() -> dict:
    """tid -> (name, cpu ticks) of this process's threads."""
    out = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
                out[tid] = (name, int(fields[11]) + int(fields[12]))
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return out


def _thread_delta(a: dict, b: dict, seconds: float) -> list:
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    rows = []
    for tid, (name, ticks) in b.items():
        base = a.get(tid, (name, 0))[1]
        rows.append({"tid": int(tid), "name": name, "cpu_s": round((ticks - base) / hz, 3), "new": tid not in a})
    rows.sort(key=lambda r: -r["cpu_s"])
    return [dict(r, cpu_pct=round(100 * r["cpu_s"] / max(seconds, 1e-9), 1)) for r in rows[:12]]


def _kernel_counts(path: str, steps: int) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{exc.__class__.__name__}: {exc}"}
    counts: dict[str, int] = {}
    for ev in data.get("traceEvents", []):
        if ev.get("ph") == "X" and ev.get("cat") == "kernel":
            counts[ev["name"]] = counts.get(ev["name"], 0) + 1
    return {"steps": steps, "kernels_per_step": round(sum(counts.values()) / max(steps, 1), 1),
            "distinct": len(counts), "counts": counts}


def _launch_probe(torch, device: str, reps: int = 30, n: int = 500) -> dict:
    """Host time per kernel launch (us): batches of ``n`` one-element in-place adds, each batch from
    an idle GPU. The minimum over ``reps`` batches is the cost without the host's interruptions
    (they only add time); an attached CUPTI adds its callback to every launch."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t = torch.zeros(1, device=device)
    per: list = []
    for _ in range(reps):
        sync()
        h0 = time.perf_counter_ns()
        for _ in range(n):
            t.add_(1.0)
        per.append((time.perf_counter_ns() - h0) / n / 1e3)
    sync()
    return {"min": round(min(per), 4), "median": round(statistics.median(per), 4)}


def _host_step_probe(fwd_bwd, torch, device: str, k: int, sleep_cycles: int) -> dict:
    """Host time (ms) to issue one forward and backward while the GPU is held behind a sleep, so the
    host never waits for it: the smallest of ``k`` is the host's own cost of a step. No optimizer
    step, so a profiler that counts steps by the optimizer does not see these."""
    cuda = device == "cuda"
    ms: list = []
    for _ in range(k + 2):  # the first two warm caches and algorithm choices; not counted
        if cuda:
            torch.cuda.synchronize()
            torch.cuda._sleep(sleep_cycles)
        h0 = time.perf_counter()
        fwd_bwd()
        ms.append((time.perf_counter() - h0) * 1e3)
    if cuda:
        torch.cuda.synchronize()
    ms = ms[2:]
    return {"min": round(min(ms), 4), "median": round(statistics.median(ms), 4)}


def _cupti_loaded() -> list:
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f if "cupti" in line.lower()})
    except OSError:
        return []


def _cpu_sets() -> tuple:
    """Split this machine's CPUs: the measured run gets the lower half, the next run's start-up the upper half."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 4:
        return cpus, cpus
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def _move_to_run_cpus() -> None:
    """Move every thread of this process onto the measured run's CPUs (``WAAE_RUN_CPUS``).

    The next run imports torch and builds its model while this one runs; on shared cores that
    start-up slows the host side of a launch-bound step by several percent, which would drown
    the 1 % this bench has to resolve. Threads created later inherit the mask.
    """
    want = os.environ.get("WAAE_RUN_CPUS")
    if not want:
        return
    cpus = {int(c) for c in want.split(",")}
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def _pin_threads(main_cpu: int | None, autograd_cpu: int | None, rest: set) -> None:
    """The two threads that issue a step's work each on one CPU of their own, every other thread
    of the process on ``rest``; ``None`` for both: every thread on ``rest``.

    A launch-bound step runs on two threads in turn (the Python thread for the forward pass and
    the optimizer, ``pt_autograd_0`` for the backward). Left to the scheduler they move between
    CPUs from run to run, and on a virtual machine two vCPUs may share one physical core; which
    pair a run lands on then sets its host speed. Threads started later (Kineto's, CUPTI's) inherit
    the mask of the thread that starts them, so this is applied again before the measured steps.
    """
    main_tid = threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            if main_cpu is not None and int(tid) == main_tid:
                want = {main_cpu}
            elif autograd_cpu is not None and name.startswith("pt_autograd"):
                want = {autograd_cpu}
            else:
                want = rest
            os.sched_setaffinity(int(tid), want)
        except OSError:
            pass


def _pin_configs(spec: str, cpus: list) -> list:
    """``"float,1:2,1:9"`` -> [(label, main, autograd, rest)]: "float" leaves both threads to the
    scheduler on ``cpus``; "A:B" pins them, everything else on ``cpus`` minus A and B."""
    out = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "float":
            out.append((item, None, None, set(cpus)))
            continue
        m, _, g = item.partition(":")
        mc, gc_ = int(m), int(g or m)
        out.append((item, mc, gc_, (set(cpus) - {mc, gc_}) or set(cpus)))
    return out


def _pin_sweep(step, a: argparse.Namespace, torch) -> dict:
    """Step time under each thread placement of ``--pin-sweep``, in interleaved blocks: per
    placement the median of each block's last steps (CUDA events), one value per round."""
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    configs = _pin_configs(a.pin_sweep, cpus)
    res: dict = {label: [] for label, *_ in configs}
    rng = random.Random(a.seed)
    for _ in range(a.sweep_rounds):
        order = list(configs)
        rng.shuffle(order)
        for label, mc, gc_, rest in order:
            _pin_threads(mc, gc_, rest)
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(a.sweep_block + 1)]
            for i in range(a.sweep_block):
                ev[i].record()
                step()
            ev[-1].record()
            torch.cuda.synchronize()
            ms = [ev[i].elapsed_time(ev[i + 1]) for i in range(a.sweep_block)]
            res[label].append(round(statistics.median(ms[a.sweep_block // 3:]), 4))
    _pin_threads(None, None, set(cpus))
    return {"block_steps": a.sweep_block, "rounds": a.sweep_rounds,
            "median_ms": {k: round(statistics.median(v), 4) for k, v in res.items()}, "blocks_ms": res}


def worker(a: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    here = os.path.dirname(os.path.abspath(__file__))  # bench/ must not shadow anything the models import
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    import torch

    result: dict = {"model": a.model, "mode": a.mode, "pid": os.getpid(), "argv": sys.argv[1:],
                    "env": {k: os.environ[k] for k in ("TEARDOWN_CUPTI", "DISABLE_CUPTI_LAZY_REINIT") if k in os.environ},
                    "under_stallscope": any("stallscope" in k.lower() for k in os.environ)}
    device = "cpu" if a.smoke else "cuda"
    torch.manual_seed(a.seed)
    model, info = _build(a.model, device)
    result["t_cpu_setup_s"] = round(time.perf_counter() - t_start, 2)

    if a.go:  # wait for the GPU: the previous run has finished its GPU phase
        while not os.path.exists(a.go):
            time.sleep(0.01)
    _move_to_run_cpus()
    t_go = time.perf_counter()
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = not a.no_cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = model.to(device)
    g = torch.Generator(device=device).manual_seed(a.seed)
    if info["kind"] == "image":
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(info["batch"], 3, info["size"], info["size"], device=device, generator=g)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, info["classes"], (info["batch"],), device=device, generator=g)
    else:
        x = torch.randint(0, info["vocab"], (info["batch"], info["seq"]), device=device, generator=g)
        y = x
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = model
    graphs = bool(info.get("compile"))
    if graphs and not a.smoke:
        fwd = torch.compile(model, mode="reduce-overhead")
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    losses: list = []

    def step(keep_loss: bool = False, optimizer: bool = True) -> None:
        if graphs and not a.smoke:
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            if info["kind"] == "image":
                loss = torch.nn.functional.cross_entropy(fwd(x), y)
            else:
                loss = fwd(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer:
            opt.step()
        if keep_loss:
            losses.append(loss.detach().float().clone())

    probes: dict = {}

    def probe(when: str) -> None:
        """The host-side costs, before the first step and after the last (same process, same CPU)."""
        if not a.probe_steps:
            return
        if pin is not None:
            _pin_threads(*pin)
        probes.setdefault("launch_us", {})[when] = _launch_probe(torch, device)
        probes.setdefault("host_step_ms", {})[when] = _host_step_probe(
            lambda: step(optimizer=False), torch, device, a.probe_steps, a.diag_sleep_cycles)

    n = a.steps
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)] if cuda else []
    host_ns = [0] * (n + 1)
    w0, w1 = a.window_start, a.window_start + a.window_steps
    prof = None
    trace_path = f"/tmp/waae_trace_{os.getpid()}.json"
    nvml: dict = {}
    thr_a: dict = {}
    t_thr_a = 0.0
    window_times: dict = {}
    mem: dict = {}
    pin = None
    if a.pin:
        mc, _, gc_ = a.pin.partition(":")
        run_set = sorted(os.sched_getaffinity(0))
        pin = (int(mc), int(gc_ or mc), (set(run_set) - {int(mc), int(gc_ or mc)}) or set(run_set))
        result["pin"] = {"main": pin[0], "autograd": pin[1], "rest": sorted(pin[2])}
    probe("before")
    for i in range(n):
        if a.mode == "window" and i == w0:
            if cuda:
                mem["before_window_reserved_mib"] = torch.cuda.memory_reserved() >> 20
            acts = [torch.profiler.ProfilerActivity.CPU]
            if "cuda" in a.activities and cuda:
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            if a.activities == "cuda" and cuda:
                acts = [torch.profiler.ProfilerActivity.CUDA]
            t0 = time.perf_counter()
            prof = torch.profiler.profile(activities=acts, record_shapes=a.record_shapes, with_stack=a.with_stack,
                                          profile_memory=a.profile_memory, with_flops=a.with_flops)
            prof.start()
            window_times["start_s"] = round(time.perf_counter() - t0, 3)
        if a.mode == "window" and i == w1 and prof is not None:
            t0 = time.perf_counter()
            for kv in a.setenv_before_stop:
                k, _, v = kv.partition("=")
                os.environ[k] = v
            prof.stop()
            window_times["stop_s"] = round(time.perf_counter() - t0, 3)
            if not a.no_export:
                t0 = time.perf_counter()
                prof.export_chrome_trace(trace_path)
                window_times["export_s"] = round(time.perf_counter() - t0, 3)
            acts_after = [s for s in a.after_stop.split(",") if s]
            if "sync" in acts_after and cuda:
                torch.cuda.synchronize()
            if "empty_cache" in acts_after and cuda:
                torch.cuda.empty_cache()
            if "gc" in acts_after:
                gc.collect()
            prof = None
        if pin is not None and i in (1, w1 + 2, n - a.measure - 1):  # before the window, after it, before the measure
            _pin_threads(*pin)
        if cuda:
            ev[i].record()
        host_ns[i] = time.perf_counter_ns()
        if i == 3:
            nvml["before"] = _nvml_read()
        if i == 12:
            thr_a, t_thr_a = _threads(), time.perf_counter()
        if i == n - 2:
            nvml["late"] = _nvml_read()
        step(keep_loss=(i == n - 1))
    if cuda:
        ev[n].record()
    host_ns[n] = time.perf_counter_ns()
    thr_b, t_thr_b = _threads(), time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
        step_ms = [ev[i].elapsed_time(ev[i + 1]) for i in range(n)]
        mem["end_reserved_mib"] = torch.cuda.memory_reserved() >> 20
        mem["max_allocated_mib"] = torch.cuda.max_memory_allocated() >> 20
    else:
        step_ms = [(host_ns[i + 1] - host_ns[i]) / 1e6 for i in range(n)]
    result["final_loss"] = float(losses[-1].item()) if losses else None
    with torch.no_grad():
        result["param_checksum"] = float(sum(p.detach().float().abs().sum().item() for p in list(model.parameters())[:8]))

    # diagnostics after the measured steps: each step queued behind a GPU sleep (GPU from a backlog)
    diag = {"gpu_backlog_ms": [], "host_enqueue_ms": [], "sleep_ms": []}
    if cuda:
        for _ in range(a.diag_steps):
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            torch.cuda.synchronize()
            e0.record()
            torch.cuda._sleep(a.diag_sleep_cycles)
            e1.record()
            h0 = time.perf_counter()
            step()
            h1 = time.perf_counter()
            e2.record()
            torch.cuda.synchronize()
            diag["sleep_ms"].append(round(e0.elapsed_time(e1), 3))
            diag["gpu_backlog_ms"].append(round(e1.elapsed_time(e2), 3))
            diag["host_enqueue_ms"].append(round((h1 - h0) * 1e3, 3))
    probe("after")
    if a.pin_sweep and cuda:
        result["pin_sweep"] = _pin_sweep(step, a, torch)
    t_gpu = time.perf_counter() - t_go

    tail_path = f"/tmp/waae_tail_{os.getpid()}.json"
    if a.tail_trace and cuda:  # a second CUPTI session after everything else (re-init after the window)
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as tp:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        tp.export_chrome_trace(tail_path)
        torch.cuda.synchronize()
        result["tail_trace_ok"] = True
    if a.done:
        Path(a.done).touch()  # the GPU is free for the next run; what follows is host-side only

    m = a.measure
    last = step_ms[n - m:]
    result.update({
        "step_ms": [round(s, 4) for s in step_ms],
        "median_last_ms": round(statistics.median(last), 4),
        "segments_ms": {f"{lo}-{hi}": round(statistics.median(step_ms[lo:hi]), 4)
                        # steps 1..w0-2: step w0-1 ends after the profiler's start, step w1-1 after its stop
                        for lo, hi in ((1, w0 - 1), (w1 + 2, 26), (26, 40), (40, 60), (60, n)) if hi - lo >= 2 and hi <= n},
        "host_step_ms_last": round(statistics.median([(host_ns[i + 1] - host_ns[i]) / 1e6 for i in range(n - m, n)]), 4),
        "nvml": nvml, "threads_after_window": _thread_delta(thr_a, thr_b, t_thr_b - t_thr_a) if thr_a else [],
        "thread_count": {"step12": len(thr_a), "end": len(thr_b)},
        "mem": mem, "window_times": window_times,
        "diag": {k: v for k, v in diag.items()},
        "diag_median": {k: round(statistics.median(v), 3) for k, v in diag.items() if v},
        "probes": probes,
        "cupti_libs_loaded": _cupti_loaded(),
        "t_gpu_phase_s": round(t_gpu, 2), "cudnn_benchmark": not a.no_cudnn_benchmark, "graphs": graphs,
    })
    if a.kernels:
        if a.mode == "window" and not a.no_export and "cuda" in a.activities:
            result["kernels_window"] = _kernel_counts(trace_path, a.window_steps)
        if a.tail_trace:
            result["kernels_tail"] = _kernel_counts(tail_path, 2)
    for p in (trace_path, tail_path):
        try:
            os.unlink(p)
        except OSError:
            pass
    result["t_total_s"] = round(time.perf_counter() - t_start, 2)
    text = json.dumps(result)
    if a.json:
        Path(a.json).write_text(text)
    else:
        print(text)
    return 0


# ----------------------------------------------------------------------------------- driver
def _sh(cmd: list, timeout: float = 10) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"error: {exc}"


def _smi() -> str:
    out = _sh(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,clocks_event_reasons.active", "--format=csv,noheader"], 8)
    return out.splitlines()[-1] if out else out


def _bootstrap_pct(base: list, cur: list) -> tuple:
    import numpy as np

    try:
        from stallscope.analyzers.stats import bootstrap_quantile_ratio
        ratios = bootstrap_quantile_ratio(np.asarray(base), np.asarray(cur), q=0.5)
        how = "stallscope.analyzers.stats.bootstrap_quantile_ratio"
    except Exception:  # noqa: BLE001 - the bench must still run without stallscope installed
        rng = np.random.default_rng(20260101)
        b, c = np.asarray(base, float), np.asarray(cur, float)
        rb = np.median(b[rng.integers(0, b.size, (2000, b.size))], axis=1)
        rc = np.median(c[rng.integers(0, c.size, (2000, c.size))], axis=1)
        ratios, how = rc / rb, "numpy percentile bootstrap (stallscope not importable)"
    lo, hi = np.quantile(ratios, [0.025, 0.975])
    return round(float(lo - 1) * 100, 2), round(float(hi - 1) * 100, 2), how


def _med(v: list):
    v = [x for x in v if x is not None]
    return round(statistics.median(v), 3) if v else None


def summarize(runs: list, meta: dict) -> dict:
    out = dict(meta)
    out["runs_total"] = len(runs)
    models: dict = {}
    how = None
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        conds: dict = {}
        plain = [r["median_last_ms"] for r in mine if r["condition"] == "plain" and r.get("ok")]
        for cond in dict.fromkeys(r["condition"] for r in mine):
            rs = [r for r in mine if r["condition"] == cond]
            ok = [r for r in rs if r.get("ok")]
            meds = [r["median_last_ms"] for r in ok]
            entry: dict = {"runs": len(ok), "failed": len(rs) - len(ok)}
            if meds:
                entry.update({
                    "median_ms": _med(meds), "run_medians_ms": [round(x, 3) for x in meds],
                    "min_ms": round(min(meds), 3), "max_ms": round(max(meds), 3),
                    "spread_pct": round((max(meds) / min(meds) - 1) * 100, 2),
                })
                if cond != "plain" and len(plain) >= 2 and len(meds) >= 2:
                    pm = statistics.median(plain)
                    lo, hi, how = _bootstrap_pct(plain, meds)
                    entry["after_window_pct"] = round((statistics.median(meds) / pm - 1) * 100, 2)
                    entry["after_window_ci95_pct"] = [lo, hi]
                    entry["run_pct_vs_plain"] = [round((x / pm - 1) * 100, 2) for x in meds]
                    entry["runs_within_1pct"] = f"{sum(abs(x / pm - 1) <= 0.01 for x in meds)}/{len(meds)}"
                entry["segments_ms"] = {k: _med([r["segments_ms"].get(k) for r in ok])
                                        for k in ok[0].get("segments_ms", {})}
                entry["gpu_backlog_ms"] = _med([r.get("diag_median", {}).get("gpu_backlog_ms") for r in ok])
                entry["host_enqueue_ms"] = _med([r.get("diag_median", {}).get("host_enqueue_ms") for r in ok])
                entry["sm_mhz_before_late"] = [_med([r["nvml"].get("before", {}).get("sm_mhz") for r in ok]),
                                               _med([r["nvml"].get("late", {}).get("sm_mhz") for r in ok])]
                reasons = sorted({str(r["nvml"].get(w, {}).get("event_reasons")) for r in ok for w in ("before", "late")})
                entry["clock_event_reasons_seen"] = reasons
                busiest: dict = {}
                for r in ok:  # per run, the busiest thread of each name (several threads share a name)
                    per_name: dict = {}
                    for t in r.get("threads_after_window", []):
                        per_name[t["name"]] = max(per_name.get(t["name"], 0.0), t["cpu_pct"])
                    for name, pct in per_name.items():
                        busiest.setdefault(name, []).append(pct)
                entry["thread_cpu_pct_after_window"] = {k: _med(v) for k, v in sorted(busiest.items(), key=lambda kv: -max(kv[1]))[:5]}
                probes = _probe_summary(ok, [r for r in mine if r["condition"] == "plain" and r.get("ok")])
                if probes:
                    entry["probes"] = probes
                fl = [r.get("final_loss") for r in ok if r.get("final_loss") is not None]
                if fl:
                    entry["final_loss"] = [round(x, 5) for x in fl]
            errs = [r.get("error") for r in rs if not r.get("ok")]
            if errs:
                entry["errors"] = errs[:3]
            conds[cond] = entry
        sweeps = [r["pin_sweep"] for r in mine if r.get("ok") and r.get("pin_sweep")]
        if sweeps:  # per placement: each run's median, then the median over runs
            per = {k: [sw["median_ms"][k] for sw in sweeps if k in sw["median_ms"]] for k in sweeps[0]["median_ms"]}
            conds["pin_sweep"] = {"runs": len(sweeps), "block_steps": sweeps[0]["block_steps"],
                                  "rounds": sweeps[0]["rounds"],
                                  "median_ms": {k: _med(v) for k, v in per.items()},
                                  "run_medians_ms": per}
        models[model] = conds
    out["bootstrap"] = f"{how or 'n/a'}: median of run medians, condition vs plain, 95 % percentile interval (2,000 resamples, seeded)"
    out["models"] = models
    kern = [r for r in runs if r.get("kernels_window") or r.get("kernels_tail")]
    if kern:
        out["kernels"] = _kernel_summary(kern)
    return out


def _probe_summary(ok: list, plain: list) -> dict:
    """Per probe: the medians over runs of its minimum before and after, each run's change
    (after / before, in one process, so the host's speed that day cancels) and, against plain
    runs, the after-values' ratio with a bootstrap 95 % interval."""
    res: dict = {}
    for name in ("launch_us", "host_step_ms"):
        pairs = [(r["probes"][name]["before"]["min"], r["probes"][name]["after"]["min"])
                 for r in ok if name in r.get("probes", {}) and "after" in r["probes"][name]]
        if not pairs:
            continue
        change = [round((b / a - 1) * 100, 2) for a, b in pairs]
        item = {"before": _med([a for a, _ in pairs]), "after": _med([b for _, b in pairs]),
                "change_pct": _med(change), "run_change_pct": change,
                "runs_change_within_1pct": f"{sum(abs(c) <= 1.0 for c in change)}/{len(change)}"}
        base = [r["probes"][name]["after"]["min"] for r in plain if name in r.get("probes", {}) and "after" in r["probes"][name]]
        if len(base) >= 2 and len(pairs) >= 2 and ok[0]["condition"] != "plain":
            lo, hi, _ = _bootstrap_pct(base, [b for _, b in pairs])
            item["after_vs_plain_pct"] = round((statistics.median([b for _, b in pairs]) / statistics.median(base) - 1) * 100, 2)
            item["after_vs_plain_ci95_pct"] = [lo, hi]
        res[name] = item
    return res


def _kernel_summary(runs: list) -> dict:
    """Kernel-set comparisons: window vs tail in one process, and tail vs tail across conditions."""
    res: dict = {}
    tails = {}
    for r in runs:
        key = f"{r['model']}/{r['condition']}/run{r['round']}"
        kw, kt = r.get("kernels_window"), r.get("kernels_tail")
        item: dict = {}
        for label, k in (("window", kw), ("tail", kt)):
            if k and "counts" in k:
                item[f"{label}_kernels_per_step"] = k["kernels_per_step"]
                item[f"{label}_distinct"] = k["distinct"]
        if kw and kt and "counts" in kw and "counts" in kt:
            a, b = set(kw["counts"]), set(kt["counts"])
            item["only_in_window"] = sorted(a - b)[:15]
            item["only_in_tail"] = sorted(b - a)[:15]
        if kt and "counts" in kt:
            tails[(r["model"], r["condition"])] = set(kt["counts"])
        res[key] = item
    for (model, cond), names in tails.items():
        base = tails.get((model, "plain"))
        if base is not None and cond != "plain":
            res[f"{model}/tail_{cond}_vs_tail_plain"] = {"only_here": sorted(names - base)[:15],
                                                        "only_plain": sorted(base - names)[:15]}
    return res


def _recorder():
    """bench/recorded.py, imported for the driver only (the worker keeps bench/ and the repository off its path)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.append(root)
    import bench.recorded as recorded  # noqa: PLC0415

    return recorded


def _shown_run(r: dict, out: Path) -> dict:
    """A run's record with its arguments, library paths and log tails written without machine paths."""
    rec = _recorder()
    if isinstance(r.get("argv"), list):
        r["argv"] = rec.recorded_argv(r["argv"], out)
    if isinstance(r.get("cupti_libs_loaded"), list):
        r["cupti_libs_loaded"] = [rec.recorded_path(p, out) for p in r["cupti_libs_loaded"]]
    for key in ("error", "stallscope_log_tail"):
        if isinstance(r.get(key), str):
            r[key] = rec.recorded_text(r[key], out)
    return r


def drive(a: argparse.Namespace) -> int:
    out = Path(a.out or os.environ.get("OUT") or ".")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models = ["tiny"] if a.smoke else [m for m in a.models.split(",") if m]
    conds = [c for c in a.conditions.split(",") if c]
    matrix = {m: list(conds) for m in models}
    if a.matrix:  # "model:cond,cond;model:cond": each model its own conditions
        matrix = {}
        for part in a.matrix.split(";"):
            m, _, cs = part.partition(":")
            if m.strip():
                matrix["tiny" if a.smoke else m.strip()] = [c for c in cs.split(",") if c]
        models = list(matrix)
        conds = list(dict.fromkeys(c for cs in matrix.values() for c in cs))
    for m in models:
        split_model(m)
    for c in conds:
        if c not in CONDITIONS:
            raise SystemExit(f"unknown condition {c!r}; known: {', '.join(CONDITIONS)}")
    kern_conds = set(c for c in a.kernels_conditions.split(",") if c)
    me = os.path.abspath(__file__)
    t0 = time.monotonic()
    run_cpus, prep_cpus = _cpu_sets()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": _recorder().recorded_command([sys.executable, me, *sys.argv[1:]], out),
        "gpu": _sh(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]),
        "driver": _sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "torch": "",
        "stallscope": "",
        "workload": f"steps {a.steps}, figure = median of the last {a.measure} (CUDA events); window steps "
                    f"{a.window_start}-{a.window_start + a.window_steps}; synthetic data on the GPU; bf16 autocast, "
                    "AdamW; image models channels-last batch 128 (224 px; cnn_graphs 112 px, torch.compile "
                    "mode=reduce-overhead) unless the name says otherwise (-bN batch, -pxN size); gpt2 batch 16 x 512",
        "conditions": {c: {"mode": CONDITIONS[c][0], "flags": " ".join(CONDITIONS[c][1]), "env": CONDITIONS[c][2]} for c in conds},
        "smi_start": _smi(),
        "cpu_siblings": _sh(["sh", "-c", "cat /sys/devices/system/cpu/cpu*/topology/thread_siblings_list | sort -u | tr '\\n' ' '"]),
        "serial": bool(a.serial),
        "pin": a.pin or None,
        "lscpu": _sh(["sh", "-c", "lscpu | grep -E 'Model name|Thread|Core|Socket|NUMA|MHz|Hypervisor'"]),
        "gpu_topology": _sh(["nvidia-smi", "topo", "-m"]),
        "cpus": f"measured run on {run_cpus[0]}-{run_cpus[-1]}, the next run's start-up on "
        f"{prep_cpus[0]}-{prep_cpus[-1]} (sched_setaffinity); the stallscope parent stays on the start-up half",
    }
    runs: list = []
    if a.resume:  # an earlier part of the same measurement (one device call is at most 10 minutes)
        prior = Path(a.resume)
        runs = [_shown_run(json.loads(line), out) for line in prior.read_text().splitlines() if line.strip()]
        prior_meta = prior.with_name(prior.name.replace(".runs.jsonl", ".yaml"))
        parts = []
        if prior_meta.exists():
            import yaml  # noqa: PLC0415 (only the resume path needs it)
            pm = yaml.safe_load(prior_meta.read_text()) or {}
            parts = list(pm.get("parts") or [{k: pm.get(k) for k in ("date", "command", "elapsed_s", "smi_start", "smi_end")}])
            for part in parts:  # an earlier part's command, recorded before its paths were rewritten
                if isinstance(part.get("command"), str):
                    part["command"] = _recorder().recorded_text(part["command"], out)
        meta["parts"] = parts
    done_ok: dict = {}
    for r in runs:
        if r.get("ok"):
            done_ok[(r["model"], r["condition"])] = done_ok.get((r["model"], r["condition"]), 0) + 1
    first_round = max((r.get("round", -1) for r in runs), default=-1) + 1
    jobs = []
    for rnd in range(a.runs):
        order = [(m, c) for m in models for c in matrix[m] if done_ok.get((m, c), 0) + rnd < a.runs]
        random.Random(a.seed * 1000 + rnd).shuffle(order)
        jobs += [(first_round + rnd, m, c) for m, c in order]
    jsonl = out / f"{a.name}.runs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in runs))
    est: dict = {}

    def spawn(job):
        rnd, model, cond = job
        k = len(spawned)
        mode, flags, env_add = CONDITIONS[cond]
        jpath = work / f"r{k}.json"
        wargs = ["worker", "--model", model, "--mode", "plain" if mode == "stallscope" else mode,
                 "--json", str(jpath), "--go", str(work / f"go{k}"), "--done", str(work / f"done{k}"),
                 "--steps", str(a.steps), "--measure", str(a.measure), "--window-start", str(a.window_start),
                 "--window-steps", str(a.window_steps), "--diag-steps", str(a.diag_steps),
                 "--probe-steps", str(a.probe_steps)] + flags
        if a.smoke:
            wargs.append("--smoke")
        if a.pin:
            wargs += ["--pin", a.pin]
        if a.pin_sweep:
            wargs += ["--pin-sweep", a.pin_sweep, "--sweep-rounds", str(a.sweep_rounds), "--sweep-block", str(a.sweep_block)]
        if cond in kern_conds and rnd == 0:
            wargs += ["--kernels", "--tail-trace"]
        if split_model(model)[0] == "cnn_graphs" and "--tail-trace" not in wargs:
            wargs.append("--tail-trace")  # a second CUPTI session after the window: the crash case for graphs
        cmd = [sys.executable, me] + wargs
        if mode == "stallscope":
            cmd = [sys.executable, "-m", "stallscope.cli", "profile", "--no-diagnose", "-q",
                   "--skip", str(a.window_start), "--steps", str(a.window_steps), "-o", str(work / f"ss{k}"), "--"] + cmd
        env = dict(os.environ, PYTHONUNBUFFERED="1", WAAE_RUN_CPUS=",".join(map(str, run_cpus)))
        for key in ("TEARDOWN_CUPTI", "DISABLE_CUPTI_LAZY_REINIT"):
            env.pop(key, None)
        env.update(env_add)
        log = open(work / f"r{k}.log", "w")
        p = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: os.sched_setaffinity(0, prep_cpus),  # start-up away from the measured run
        )
        rec = {"k": k, "round": rnd, "model": model, "condition": cond, "proc": p, "log": log, "json": jpath,
               "go": work / f"go{k}", "done": work / f"done{k}", "cmd": " ".join(shlex.quote(x) for x in cmd[1:]),
               "spawned": time.monotonic()}
        spawned.append(rec)
        return rec

    def finish(rec, reason=None, record=True):
        p = rec["proc"]
        if reason is not None and p.poll() is None:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass
            p.wait()
        rec["log"].close()
        if not record:
            return
        r = {"round": rec["round"], "model": rec["model"], "condition": rec["condition"], "rc": p.returncode,
             "gpu_wall_s": rec.get("gpu_wall_s"), "smi_before": rec.get("smi_before"), "smi_after": rec.get("smi_after")}
        try:
            r.update(json.loads(rec["json"].read_text()))
            r["ok"] = p.returncode == 0 and reason is None
        except Exception as exc:  # noqa: BLE001
            r["ok"] = False
            r["error"] = reason or f"no result ({exc.__class__.__name__}); log tail: " + \
                (work / f"r{rec['k']}.log").read_text(errors="replace")[-600:]
        if CONDITIONS[rec["condition"]][0] == "stallscope":
            traces = list((work / f"ss{rec['k']}").rglob("trace.json.gz"))
            r["stallscope_trace_written"] = bool(traces)
            if not traces:
                r["stallscope_log_tail"] = (work / f"r{rec['k']}.log").read_text(errors="replace")[-400:]
        if not r["ok"] and "error" not in r:
            r["error"] = f"rc={p.returncode} {reason or ''}: " + (work / f"r{rec['k']}.log").read_text(errors="replace")[-600:]
        runs.append(_shown_run(r, out))
        with open(jsonl, "a") as f:
            f.write(json.dumps(r) + "\n")
        (out / f"{a.name}.yaml").write_text(_yaml(summarize(runs, dict(meta, elapsed_s=round(time.monotonic() - t0, 1)))))
        shutil.rmtree(work / f"ss{rec['k']}", ignore_errors=True)

    spawned: list = []
    finishing: list = []
    pending = list(jobs)
    nxt = spawn(pending.pop(0)) if pending else None
    # asked while the first run starts up, so that the two cold imports cost no extra time
    meta["torch"] = _sh([sys.executable, "-c", "import torch;print(torch.__version__, torch.version.cuda)"], 60)
    meta["stallscope"] = _sh([sys.executable, "-m", "stallscope.cli", "--version"], 60)
    skipped = 0
    while nxt is not None:
        cur, nxt = nxt, None
        left = a.deadline_s - (time.monotonic() - t0)
        graphs_run = split_model(cur["model"])[0] == "cnn_graphs"
        need = est.get(cur["model"], a.first_estimate_s * (4 if graphs_run else 1))
        if left < need:
            finish(cur, reason="not started: deadline", record=False)
            skipped = 1 + len(pending)
            break
        cur["smi_before"] = _smi()
        cur["go"].touch()
        t_go = time.monotonic()
        if pending and not a.serial:
            nxt = spawn(pending.pop(0))
        limit = min(a.run_timeout_s * (3 if graphs_run else 1), max(left, 5))
        reason = None
        while not cur["done"].exists():
            if cur["proc"].poll() is not None:
                break
            if time.monotonic() - t_go > limit:
                reason = f"timeout after {limit:.0f} s"
                break
            time.sleep(0.02)
        cur["gpu_wall_s"] = round(time.monotonic() - t_go, 2)
        cur["smi_after"] = _smi()
        if reason is None and cur["done"].exists():
            prev = est.get(cur["model"])
            est[cur["model"]] = cur["gpu_wall_s"] if prev is None else max(prev * 0.5 + cur["gpu_wall_s"] * 0.5, cur["gpu_wall_s"] * 0.8)
        print(f"[{time.monotonic() - t0:6.1f}s] r{cur['round']} {cur['model']:>15} {cur['condition']:<24} "
              f"gpu {cur['gpu_wall_s']:5.1f}s {reason or ''}", flush=True)
        if reason is not None or not cur["done"].exists():
            finish(cur, reason=reason)
        else:
            finishing.append(cur)
        still = []
        for rec in finishing:
            if rec["proc"].poll() is not None:
                finish(rec)
            else:
                still.append(rec)
        finishing = still
        if a.serial:  # nothing else on the machine while the next run measures
            for rec in finishing:
                finish(rec)
            finishing = []
            if pending:
                nxt = spawn(pending.pop(0))
    for rec in finishing:
        finish(rec)
    if nxt is not None:
        finish(nxt, reason="not started", record=False)
    meta["skipped_runs_deadline"] = skipped
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["smi_end"] = _smi()
    if "parts" in meta:
        meta["parts"] = meta["parts"] + [{k: meta.get(k) for k in ("date", "command", "elapsed_s", "smi_start", "smi_end")}]
    summary = summarize(runs, meta)
    (out / f"{a.name}.yaml").write_text(_yaml(summary))
    _print_table(summary)
    return 0


def _yaml(d: dict) -> str:
    try:
        import yaml

        return yaml.safe_dump(d, sort_keys=False, width=200)
    except Exception:  # noqa: BLE001 - never lose the results to a formatting error
        return json.dumps(d, indent=1, default=str)


def _print_table(s: dict) -> None:
    print(f"\n{'model':>15} {'condition':<24} {'n':>2} {'median':>8} {'after%':>7} {'ci95%':>16} {'within1%':>8} "
          f"{'gpu_bl':>7} {'host_enq':>8}  run medians")
    for model, conds in s.get("models", {}).items():
        for cond, e in conds.items():
            if cond == "pin_sweep":
                print(f"{model:>15} thread placement, median ms over {e['runs']} runs: {e['median_ms']}")
                continue
            ci = e.get("after_window_ci95_pct")
            print(f"{model:>15} {cond:<24} {e['runs']:>2} {e.get('median_ms', float('nan')):>8.2f} "
                  f"{e.get('after_window_pct', 0.0):>7.1f} {str(ci) if ci else '':>16} {e.get('runs_within_1pct', ''):>8} "
                  f"{e.get('gpu_backlog_ms') or 0:>7.2f} {e.get('host_enqueue_ms') or 0:>8.2f}  {e.get('run_medians_ms', [])}"
                  + (f"  ERR {e['errors'][0][:200]!r}" if e.get("errors") else ""))


def _add_pin_args(p: argparse.ArgumentParser) -> None:
    """Thread-placement flags, the same for the worker and for drive (which passes them on)."""
    p.add_argument("--pin", default="", metavar="A:B",
                   help="the Python thread on CPU A, pt_autograd on CPU B (both in the measured half), "
                   "other threads on the rest of the run's CPUs")
    p.add_argument("--pin-sweep", default="", metavar="float,A:B,...",
                   help="after the measured steps, step time per thread placement (interleaved blocks; "
                   "use with --serial)")
    p.add_argument("--sweep-rounds", type=int, default=4)
    p.add_argument("--sweep-block", type=int, default=12)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker", help="one run in this process")
    w.add_argument("--model", default="resnet50", help=f"{', '.join(MODELS)}, with -bN / -pxN overrides")
    w.add_argument("--mode", default="plain", choices=("plain", "window"))
    w.add_argument("--steps", type=int, default=80)
    w.add_argument("--measure", type=int, default=40)
    w.add_argument("--window-start", type=int, default=5)
    w.add_argument("--window-steps", type=int, default=5)
    w.add_argument("--activities", default="cpu,cuda", help="cpu | cuda | cpu,cuda")
    w.add_argument("--record-shapes", action="store_true")
    w.add_argument("--with-stack", action="store_true")
    w.add_argument("--profile-memory", action="store_true")
    w.add_argument("--with-flops", action="store_true")
    w.add_argument("--no-export", action="store_true", help="do not export the window trace")
    w.add_argument("--after-stop", default="", help="comma list of sync, empty_cache, gc: done when the window stops")
    w.add_argument("--setenv-before-stop", action="append", default=[], metavar="K=V")
    w.add_argument("--no-cudnn-benchmark", action="store_true")
    w.add_argument("--diag-steps", type=int, default=4)
    w.add_argument("--diag-sleep-cycles", type=int, default=300_000_000)
    w.add_argument("--probe-steps", type=int, default=0,
                   help="host-cost probes before the first step and after the last: launch cost and "
                   "the host's time for a forward and backward, the smallest of this many")
    w.add_argument("--kernels", action="store_true", help="kernel names/counts of the window and tail traces")
    w.add_argument("--tail-trace", action="store_true", help="a 2-step CUDA trace after everything else")
    w.add_argument("--seed", type=int, default=0)
    _add_pin_args(w)
    w.add_argument("--go", default=None)
    w.add_argument("--done", default=None)
    w.add_argument("--json", default=None)
    w.add_argument("--smoke", action="store_true", help="CPU, for testing the plumbing")
    d = sub.add_parser("drive", help="interleaved fresh-process runs -> YAML")
    d.add_argument("--models", default=DEFAULT_MODELS)
    d.add_argument("--conditions", default="plain,window,stallscope")
    d.add_argument("--matrix", default="", help='per-model conditions, "resnet50:plain,window;gpt2:plain" (overrides --models/--conditions)')
    d.add_argument("--kernels-conditions", default="", help="conditions whose first-round run records kernel names")
    d.add_argument("--runs", type=int, default=5)
    d.add_argument("--deadline-s", type=float, default=480.0, help="start no run that would end past this")
    d.add_argument("--first-estimate-s", type=float, default=12.0)
    d.add_argument("--run-timeout-s", type=float, default=90.0)
    d.add_argument("--steps", type=int, default=80)
    d.add_argument("--measure", type=int, default=40)
    d.add_argument("--window-start", type=int, default=5)
    d.add_argument("--window-steps", type=int, default=5)
    d.add_argument("--diag-steps", type=int, default=4)
    d.add_argument("--probe-steps", type=int, default=0, help="passed to each worker (0: no probes)")
    d.add_argument("--seed", type=int, default=22)
    d.add_argument("--name", default="window-after-effect")
    d.add_argument("--out", default=None, help="default $OUT")
    d.add_argument("--workdir", default="/tmp/waae_work")
    d.add_argument("--smoke", action="store_true")
    d.add_argument("--serial", action="store_true",
                   help="start each run only after the previous one has exited (no start-up or teardown beside it)")
    _add_pin_args(d)
    d.add_argument("--resume", default=None, metavar="RUNS_JSONL",
                   help="continue an earlier part: keep its runs, run only what each model/condition still lacks of --runs")
    a = p.parse_args(argv)
    return worker(a) if a.cmd == "worker" else drive(a)


if __name__ == "__main__":
    sys.exit(main())
