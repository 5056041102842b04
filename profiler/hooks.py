"""Where the profiler touches the target: step detection, phase ranges, DataLoader waits.

Public seams (used by other parts of stallscope inside the target process):

* :func:`add_step_listener` — call ``fn(StepEvent)`` at the end of every step.
* :func:`root_modules` — the outermost ``nn.Module`` objects seen called.
* :func:`dataloaders` — the ``DataLoader`` objects seen iterated.

Everything here is installed once per process by :func:`install` and calls into the active
recorder (``profiler.recorder.Recorder``), through its public methods only. No hook may raise into the target: each one swallows
its own errors and reports them once as a notice.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "StepEvent",
    "add_step_listener",
    "remove_step_listener",
    "root_modules",
    "dataloaders",
    "install",
    "detach",
    "step_listeners",
]


@dataclass(frozen=True)
class StepEvent:
    """One finished step, as the target process saw it."""

    index: int
    wall_ms: float
    data_wait_ms: float
    in_window: bool


# Called at the end of every step; the recorder tests this list before building a StepEvent.
step_listeners: list[Callable[[StepEvent], None]] = []
_roots: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_root_order: list[int] = []
_loaders: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_loader_order: list[int] = []
_worker_iters: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False
_recorder: Any = None
_depth = threading.local()

# Outermost calls seen through the global module hooks before they are swapped for hooks on
# the root instances only (global hooks push every submodule call down torch's slow path).
GLOBAL_HOOK_CALLS = 8
# Training-mode forwards without any optimizer step before module calls count as steps.
TRAIN_FORWARDS_BEFORE_MODULE_STEPS = 16


def add_step_listener(fn: Callable[[StepEvent], None]) -> None:
    """Call ``fn(event)`` at the end of every step in this process (errors in ``fn`` are reported once)."""
    step_listeners.append(fn)
    if _recorder is not None:
        _recorder.listeners_changed()


def remove_step_listener(fn: Callable[[StepEvent], None]) -> None:
    """Stop calling ``fn``; unknown functions are ignored."""
    try:
        step_listeners.remove(fn)
    except ValueError:
        pass


def root_modules() -> list:
    """The outermost ``nn.Module`` objects seen called in this process, oldest first (still alive)."""
    return [m for m in (_roots.get(i) for i in _root_order) if m is not None]


def dataloaders() -> list:
    """The ``DataLoader`` objects seen iterated in this process, oldest first (still alive)."""
    return [d for d in (_loaders.get(i) for i in _loader_order) if d is not None]


def worker_pids() -> list:
    """PIDs of the DataLoader worker processes of the live iterators (may race with the main thread: retry later)."""
    pids = []
    for it in list(_worker_iters):
        for w in list(getattr(it, "_workers", None) or []):
            pid = getattr(w, "pid", None)
            if pid:
                pids.append(pid)
    return pids


def notify_step(event: StepEvent) -> None:
    """Call every step listener with ``event`` (a failing listener is reported once, never raised)."""
    for fn in list(step_listeners):
        try:
            fn(event)
        except Exception as exc:  # a listener must never break the target
            if _recorder is not None:
                _recorder.notice_once(
                    f"step listener {getattr(fn, '__qualname__', fn)!s} failed: {exc.__class__.__name__}: {exc}"
                )


def _remember_root(module: Any) -> None:
    key = id(module)
    if key not in _roots:
        try:
            _roots[key] = module
            _root_order.append(key)
        except TypeError:
            pass


def _remember_loader(loader: Any) -> None:
    key = id(loader)
    if key not in _loaders:
        try:
            _loaders[key] = loader
            _loader_order.append(key)
        except TypeError:
            pass


def _not_compiling() -> bool:
    return False


_compiling: Callable[[], bool] = _not_compiling  # torch.compiler.is_compiling once torch is imported


def _guard(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        # Inside code that torch.compile traces (a module compiled in place, a compiled optimizer
        # step) the hook does nothing: traced, our state would become guards and every step would
        # recompile. Checked first, before any state is read.
        if _compiling():
            return None
        rec = _recorder
        if rec is None or not rec.live():
            return None
        try:
            return fn(rec, *args, **kwargs)
        except Exception as exc:
            rec.notice_once(f"hook {name} failed and was skipped: {exc.__class__.__name__}: {exc}")
            return None

    return guarded


def _optimizer_hook(name: str, method: str) -> Callable[[Any, Any, Any], None]:
    """An optimizer-step hook calling ``recorder.<method>(opt)``. It runs every training step, so
    the guard is written out here, without _guard's extra frames."""

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        if _compiling():
            return
        rec = _recorder
        if rec is None or rec.disabled or rec.finished:
            return
        try:
            getattr(rec, method)(opt)
        except Exception as exc:
            rec.notice_once(f"hook {name} failed and was skipped: {exc.__class__.__name__}: {exc}")

    return hook


class _ModuleHooks:
    """Outermost-module detection: global hooks first, then hooks on the root instances only."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.global_handles: list = []
        self.instance_handles: dict = {}
        self.outermost_calls = 0
        self.active = True
        self.prune_pending = False
        self.keep_global = False

    def start(self) -> None:
        import warnings

        # torch warns on every call of a compiled module while global hooks exist; these are ours
        # (the user registered nothing) and they handle the extra call (depth counting)
        warnings.filterwarnings(
            "ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks", category=UserWarning
        )
        mod = self.torch.nn.modules.module
        self.global_handles.append(mod.register_module_forward_pre_hook(_guard("forward_pre", self._pre)))
        try:
            h = mod.register_module_forward_hook(_guard("forward_post", self._post), always_call=True)
        except TypeError:
            h = mod.register_module_forward_hook(_guard("forward_post", self._post))
        self.global_handles.append(h)

    def _pre(self, rec: Any, module: Any, args: Any) -> None:
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        if depth == 0:
            _remember_root(module)
            self.outermost_calls += 1
            inference = not (module.training and self.torch.is_grad_enabled())
            rec.on_forward_begin(inference)
            if self.global_handles and self.outermost_calls >= GLOBAL_HOOK_CALLS and not self.keep_global:
                if compiled_code_present(module):
                    self.keep_global = True  # for good: compiled graphs guard on these hooks
                else:
                    self._switch_to_instances()

    def _post(self, rec: Any, module: Any, args: Any, output: Any) -> None:
        depth = getattr(_depth, "n", 1) - 1
        _depth.n = max(depth, 0)
        if depth == 0:
            rec.on_forward_end()
            if self.prune_pending and not self.active:
                self._drop_instances()

    def _switch_to_instances(self) -> None:
        for h in self.global_handles:
            h.remove()
        self.global_handles = []
        for module in root_modules():
            self.hook_instance(module)  # the call in flight needs its post hook
        if not self.active:
            self.prune_pending = True

    def set_active(self, active: bool) -> None:
        """Keep or drop the per-root hooks (the global ones retire by themselves)."""
        self.active = active
        if self.global_handles:
            return
        if active:
            self.prune_pending = False
            for module in root_modules():
                self.hook_instance(module)
        elif getattr(_depth, "n", 0) == 0:
            self._drop_instances()
        else:
            self.prune_pending = True  # inside a forward: drop them once it returns

    def _drop_instances(self) -> None:
        self.prune_pending = False
        for pre, post in self.instance_handles.values():
            pre.remove()
            post.remove()
        self.instance_handles = {}

    def hook_instance(self, module: Any) -> None:
        if id(module) in self.instance_handles:
            return
        pre = module.register_forward_pre_hook(_guard("forward_pre", self._pre))
        try:
            post = module.register_forward_hook(_guard("forward_post", self._post), always_call=True)
        except TypeError:
            post = module.register_forward_hook(_guard("forward_post", self._post))
        self.instance_handles[id(module)] = (pre, post)


def compiled_code_present(module: Any) -> bool:
    """Whether torch.compile has compiled anything (or ``module`` is a compiled module).

    Dynamo guards on the number of global module hooks: removing ours after a graph was
    compiled makes every compiled graph recompile (seconds each) at its next call, so once
    anything is compiled the global hooks stay."""
    if hasattr(module, "_orig_mod") or getattr(module, "_compiled_call_impl", None) is not None:
        return True
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return False
    try:
        return bool(utils.counters["stats"]["unique_graphs"])
    except Exception:  # dynamo loaded but its counters moved: keep the hooks, the safe side
        return True


def _wrap(owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = getattr(owner, attr)
    if getattr(original, "__stallscope__", False):
        return
    wrapped = make(original)
    wrapped.__stallscope__ = True  # type: ignore[attr-defined]
    wrapped.__wrapped__ = original  # type: ignore[attr-defined]
    wrapped.__name__ = getattr(original, "__name__", attr)
    wrapped.__doc__ = getattr(original, "__doc__", None)
    setattr(owner, attr, wrapped)


def detach(recorder: Any) -> None:
    """Stop calling ``recorder`` (the hooks stay installed and do nothing until the next install)."""
    global _recorder
    if _recorder is recorder:
        _recorder = None


def install(recorder: Any) -> None:
    """Attach ``recorder`` and install the torch hooks (once per process; later calls just re-point)."""
    global _recorder, _installed, _compiling
    _recorder = recorder
    if _installed:
        return
    _installed = True
    import torch

    _compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or _not_compiling
    import torch.utils.data.dataloader as dl

    # Optimizer steps: the training step boundary.
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(_optimizer_hook("optimizer_pre", "on_optimizer_begin"))
    register_optimizer_step_post_hook(_optimizer_hook("optimizer_post", "on_optimizer_end"))

    recorder.module_hooks = _ModuleHooks(torch)
    recorder.module_hooks.start()

    # DataLoader: wait per step and the loaders themselves.
    def make_next(original: Callable[..., Any]) -> Callable[..., Any]:
        def __next__(self: Any) -> Any:
            rec = _recorder
            if rec is None or not rec.live():
                return original(self)
            try:
                token = rec.on_data_begin()
            except Exception as exc:
                rec.notice_once(f"hook dataloader failed and was skipped: {exc.__class__.__name__}: {exc}")
                return original(self)
            try:
                return original(self)
            finally:
                try:
                    rec.on_data_end(token)
                except Exception:
                    pass

        return __next__

    def make_init(original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, loader: Any, *args: Any, **kwargs: Any) -> None:
            original(self, loader, *args, **kwargs)
            try:
                _remember_loader(loader)
                if getattr(self, "_num_workers", 0) > 0:
                    _worker_iters.add(self)
            except Exception:
                pass

        return __init__

    _wrap(dl._BaseDataLoaderIter, "__next__", make_next)
    _wrap(dl._BaseDataLoaderIter, "__init__", make_init)

    # Backward: a phase range around torch.autograd.backward (Tensor.backward calls it).
    def make_backward(original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(*args: Any, **kwargs: Any) -> Any:
            rec = _recorder
            if rec is None or not rec.phases_on or not rec.live():
                return original(*args, **kwargs)
            try:
                token = rec.phase_begin("backward")
            except Exception:
                token = None
            try:
                return original(*args, **kwargs)
            finally:
                try:
                    rec.phase_end(token)
                except Exception:
                    pass

        return backward

    _wrap(torch.autograd, "backward", make_backward)

    # CUDA graph capture: no event record or query may happen meanwhile (see Recorder.on_capture_begin).
    try:
        from torch.cuda.graphs import CUDAGraph

        def make_capture_begin(original: Callable[..., Any]) -> Callable[..., Any]:
            def capture_begin(self: Any, *args: Any, **kwargs: Any) -> Any:
                rec = _recorder
                if rec is not None:
                    rec.on_capture_begin()
                try:
                    return original(self, *args, **kwargs)
                except BaseException:
                    if rec is not None:
                        rec.on_capture_end()
                    raise

            return capture_begin

        def make_capture_end(original: Callable[..., Any]) -> Callable[..., Any]:
            def capture_end(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return original(self, *args, **kwargs)
                finally:
                    rec = _recorder
                    if rec is not None:
                        rec.on_capture_end()

            return capture_end

        _wrap(CUDAGraph, "capture_begin", make_capture_begin)
        _wrap(CUDAGraph, "capture_end", make_capture_end)
    except (ImportError, AttributeError) as exc:
        recorder.notice_once(
            f"CUDA graph capture not watched ({exc.__class__.__name__}); gpu_ms may be missing around captures"
        )

    # A user's own torch.profiler: step from its prof.step(), never fight it for Kineto.
    import torch.profiler as tprof

    def make_start(original: Callable[..., Any]) -> Callable[..., Any]:
        def start(self: Any) -> Any:
            rec = _recorder
            if rec is not None and rec.live() and not getattr(self, "_stallscope_own", False):
                try:
                    rec.on_user_profiler_start()
                except Exception:
                    pass
            return original(self)

        return start

    def make_step(original: Callable[..., Any]) -> Callable[..., Any]:
        def step(self: Any) -> Any:
            result = original(self)
            rec = _recorder
            if rec is not None and rec.live() and not getattr(self, "_stallscope_own", False):
                try:
                    rec.boundary("profiler_step")
                except Exception as exc:
                    rec.notice_once(f"hook profiler_step failed and was skipped: {exc.__class__.__name__}: {exc}")
            return result

        return step

    _wrap(tprof.profile, "start", make_start)
    _wrap(tprof.profile, "step", make_step)

    # The legacy autograd profiler used as a context manager also needs Kineto to itself.
    import torch.autograd.profiler as legacy

    def make_enter(original: Callable[..., Any]) -> Callable[..., Any]:
        def __enter__(self: Any) -> Any:
            rec = _recorder
            if rec is not None and rec.live():
                try:
                    rec.on_user_profiler_start()
                except Exception:
                    pass
            return original(self)

        return __enter__

    _wrap(legacy.profile, "__enter__", make_enter)
