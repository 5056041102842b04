"""Auto-patch inside the target process: measure, diagnose, apply, verify, measure, keep or roll back.

The profiler's bootstrap calls :func:`attach` when ``STALLSCOPE_AUTOPATCH=1`` (and
:func:`attach_from_report` when ``STALLSCOPE_PATCH_FROM`` names a report). Everything runs at
step boundaries reported by ``profiler.hooks.add_step_listener``:

1. after the skip (and outside the trace window), time ``K`` steps, synchronizing the GPU at
   each step end so wall time includes the GPU work;
2. diagnose in-process: each registered fix's ``find_targets`` on the live root modules and
   DataLoaders, its refusals (``why_not``) and its rule (``diagnose``: the findings when known,
   else the fix's own cheap check, e.g. TF32 off with fp32 GEMMs on CUDA);
3. for each fix that is called for, one at a time: apply at a step boundary; on the next real
   inputs check parity (:mod:`stallscope.fixes.parity`), before the patched code runs for real, and roll
   back at once on failure; skip one warm-up step (JIT, autotuning); time ``K`` steps;
4. keep the fix only when it is faster with confidence: a one-sided Mann-Whitney U test
   (``p < 0.01``, the CI gate's test) **and** a median gain of at least 2 %; else roll back;
5. write ``patches.yaml`` into the rank directory (atomically) after every decision.

The 2 % floor: steps of one process drift by about 1 % over a few hundred steps (clocks,
allocator state), so a smaller gain cannot be told from drift by a test on ~20 samples.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stallscope.analyzers.stats import mann_whitney_greater
from stallscope.fixes.base import Fix, PatchHandle, Target, Tolerance, registered_fixes
from stallscope.fixes.parity import ParityProbe, ParityResult, merge_results, unwrap_model
from stallscope.fixes.startup import attach_from_report, load_kept_fixes, module_names, suspender
from stallscope.profiler import runformat
from stallscope.profiler.common import write_yaml
from stallscope.profiler.patchphases import BEFORE_PATCHES, phase_name

__all__ = [
    "ALPHA",
    "MIN_GAIN_PCT",
    "AutoPatcher",
    "FixRecord",
    "attach",
    "attach_from_report",
    "load_kept_fixes",
    "p_faster",
    "plan_fix",
]

ALPHA = 0.01
MIN_GAIN_PCT = 2.0
PARITY_WAIT_STEPS = 3
# With n samples a side, fully separated, the one-sided Mann-Whitney p is smallest; it first
# drops below 0.01 at n = 5, so fewer steps could never keep a fix. 6 leaves a little room.
MIN_PATCH_STEPS = 6
SCHEMA_VERSION = 1
_SCOPE_ORDER = {"module": 0, "process": 1, "dataloader": 2}


def p_faster(before: Sequence[float], after: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "steps after the patch tend to be shorter" (the CI
    gate's test, :func:`stallscope.analyzers.stats.mann_whitney_greater`)."""
    return float(mann_whitney_greater(list(after), list(before)))


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def _samples(xs: Sequence[float]) -> dict[str, Any]:
    return {"samples_ms": [round(x, 4) for x in xs], "median_ms": round(_median(xs), 4) if xs else None, "n": len(xs)}


@dataclass
class FixRecord:
    """What happened to one fix; ``to_dict`` is its entry in ``patches.yaml``."""

    id: str
    decision: str = "skipped"  # applied | kept | rolled_back | skipped
    why: str = ""
    scope: str = "module"
    targets: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    before: list[float] = field(default_factory=list)
    after: list[float] = field(default_factory=list)
    p_value: float | None = None
    handles: list[PatchHandle] = field(default_factory=list, repr=False)

    @property
    def speedup(self) -> float | None:
        if not self.before or not self.after:
            return None
        return _median(self.before) / _median(self.after)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "decision": self.decision,
            "why": self.why,
            "scope": self.scope,
            "targets": self.targets[:50],
            "targets_count": len(self.targets),
        }
        if self.refused:
            out["refused"] = dict(list(self.refused.items())[:20])
        if self.tolerance:
            out["tolerance"] = self.tolerance
        out["parity"] = self.parity
        out["before"] = _samples(self.before) if self.before else None
        out["after"] = _samples(self.after) if self.after else None
        out["speedup"] = round(self.speedup, 4) if self.speedup else None
        out["gain_pct"] = round(100.0 * (1.0 - 1.0 / self.speedup), 3) if self.speedup else None
        out["p_value"] = float(f"{self.p_value:.3g}") if self.p_value is not None else None
        return out


def _cuda_sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _uses_cuda(roots: Sequence[Any]) -> bool:
    for root in roots:
        for p in root.parameters():
            return p.is_cuda
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


class AutoPatcher:
    """The in-process state machine behind ``--auto-patch``; ``on_step`` is the step listener."""

    def __init__(
        self,
        rank_dir: Path | None,
        patch_steps: int,
        hooks: Any,
        *,
        skip: int = 0,
        fixes: Mapping[str, type[Fix] | Fix] | None = None,
        only: Sequence[str] | None = None,
        findings: Sequence[Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sync: Callable[[], None] = _cuda_sync,
    ) -> None:
        self.rank_dir = Path(rank_dir) if rank_dir is not None else None
        self.k = max(MIN_PATCH_STEPS, int(patch_steps))
        self.k_note = (
            f"patch_steps raised from {patch_steps} to {self.k}: fewer samples a side cannot reach p < {ALPHA}"
            if int(patch_steps) < MIN_PATCH_STEPS
            else None
        )
        self.hooks = hooks
        self.skip = skip
        registry = dict(fixes) if fixes is not None else dict(registered_fixes())
        if only:
            registry = {i: f for i, f in registry.items() if i in set(only)}
        self.fixes: dict[str, Fix] = {i: (f() if isinstance(f, type) else f) for i, f in registry.items()}
        self.findings = list(findings or [])
        self.clock, self.sync = clock, sync
        self.phase = "wait"
        self.steps_seen = 0
        self.baseline: list[float] = []
        self.records: list[FixRecord] = []
        self.queue: list[FixRecord] = []
        self.current: FixRecord | None = None
        self.context: dict[str, Any] = {}
        self._last_t: float | None = None
        self._data_wait: list[float] = []
        self._probes: list[Any] = []
        self._parity_results: list[Any] = []
        self._phase_steps = 0
        self._own_checks = 0
        self._finished = False
        # which patches each step ran with: a new entry whenever that changes (patchphases.Phase)
        self.phases: list[dict[str, Any]] = [{"name": BEFORE_PATCHES, "first_step": 0}]
        self._step = -1

    # -- step listener -------------------------------------------------------------------
    def on_step(self, event: Any) -> None:
        """Called at every step end with a StepEvent(index, wall_ms, data_wait_ms, in_window)."""
        self.steps_seen += 1
        self._step = int(getattr(event, "index", self._step + 1))
        if self.phase == "done":
            return
        if getattr(event, "in_window", False) or event.index < self.skip:
            self._last_t = None
            return
        try:
            self._advance(event)
        except Exception as exc:  # auto-patch must never take the program down
            self._abort(f"auto-patch stopped: {type(exc).__name__}: {exc}")

    def _tick(self) -> float | None:
        self.sync()
        now = self.clock()
        dt = None if self._last_t is None else (now - self._last_t) * 1000.0
        self._last_t = now
        return dt

    def _advance(self, event: Any) -> None:
        if self.phase == "wait":
            self._tick()
            self.phase = "baseline"
            return
        if self.phase == "baseline":
            dt = self._tick()
            if dt is not None:
                self.baseline.append(dt)
                self._data_wait.append(float(getattr(event, "data_wait_ms", 0.0) or 0.0))
            if len(self.baseline) >= self.k:
                self._diagnose()
                self._next_fix()
            return
        rec = self.current
        assert rec is not None
        self._phase_steps += 1
        if self.phase == "parity":
            self._last_t = None
            waiting = len(self._parity_results) < len(self._probes) + self._own_checks
            if rec.decision == "applied" and waiting and self._phase_steps < PARITY_WAIT_STEPS:
                return
            self._close_parity(rec)
            return
        if self.phase == "effective":
            fix = self.fixes[rec.id]
            if all(_effective(fix, h) for h in rec.handles):
                self.phase, self._phase_steps = "warmup", 0
            elif self._phase_steps > 20 * self.k:
                self._rollback(rec, f"the change did not take effect within {20 * self.k} steps (no new epoch began)")
            self._last_t = None
            return
        if self.phase == "warmup":
            self._tick()
            self.phase = "measure"
            return
        if self.phase == "measure":
            dt = self._tick()
            if dt is not None:
                rec.after.append(dt)
            if len(rec.after) >= self.k:
                self._decide(rec)

    # -- diagnosis -----------------------------------------------------------------------
    def _roots(self) -> list[Any]:
        roots, seen = [], set()
        for m in list(self.hooks.root_modules()):
            m = unwrap_model(m)
            if id(m) not in seen:
                seen.add(id(m))
                roots.append(m)
        return roots

    def _diagnose(self) -> None:
        roots = self._roots()
        loaders = list(getattr(self.hooks, "dataloaders", lambda: [])())
        wall = sum(self.baseline)
        self.context = {
            "findings": self.findings,
            "findings_complete": bool(self.findings),
            "cuda": _uses_cuda(roots),
            "data_wait_pct": 100.0 * sum(self._data_wait) / wall if wall > 0 else None,
            "step_ms": _median(self.baseline),
        }
        for fix_id, fix in sorted(self.fixes.items(), key=lambda kv: (_SCOPE_ORDER.get(kv[1].scope, 3), kv[0])):
            self.records.append(plan_fix(fix_id, fix, roots, loaders, self.context))
        self.queue = [r for r in self.records if r.decision == "pending"]
        self._write()

    # -- one fix at a time ---------------------------------------------------------------
    def _next_fix(self) -> None:
        if not self.queue:
            self.phase = "done"
            self.current = None
            self._write()
            return
        rec = self.current = self.queue.pop(0)
        fix = self.fixes[rec.id]
        targets = [h.target for h in rec.handles]
        rec.handles = []
        try:
            for t in targets:
                rec.handles.append(fix.apply(t))
        except Exception as exc:
            self._revert_all(rec)
            rec.decision, rec.why = "rolled_back", f"apply failed on {t.name}: {type(exc).__name__}: {exc}"
            self._next_fix()
            return
        rec.decision = "applied"
        self._mark_phase()
        self._parity_results, self._probes, self._phase_steps, self._own_checks = [], [], 0, 0
        self.phase = "parity"
        self._start_parity(rec, fix)
        self._write()

    def _start_parity(self, rec: FixRecord, fix: Fix) -> None:
        for h in rec.handles:
            own = fix.verify(h)
            if own is not None:
                self._own_checks += 1
                self._parity_results.append(own)
                continue
            module = fix.parity_module(h)
            if module is None:
                continue
            probe = ParityProbe(
                module, suspender(fix, h), fix.tolerance_for(h.target), self._on_parity, name=h.target.name
            )
            self._probes.append(probe)

    def _on_parity(self, probe: Any, result: Any) -> None:
        self._parity_results.append(result)
        rec = self.current
        if rec is not None and not result.passed and rec.decision == "applied":
            for p in self._probes:
                p.cancel()
            self._rollback(rec, f"parity failed on {result.module or probe.name}: {result.reason}", advance=False)

    def _close_parity(self, rec: FixRecord) -> None:
        for p in self._probes:
            p.cancel()
        module_results = [r for r in self._parity_results if isinstance(r, ParityResult)]
        own = [r for r in self._parity_results if isinstance(r, dict)]
        merged = rec.parity = _parity_record(module_results, own, len(self._probes), rec.tolerance)
        if rec.decision == "rolled_back":
            self._next_fix()
            return
        if not module_results and not own:
            if not self._probes:
                merged["reason"] = "the fix offers no parity check (no module to compare on, no verify())"
                rec.parity = merged
            self._rollback(rec, merged["reason"])
            return
        if not merged.get("passed"):
            self._rollback(rec, f"parity failed: {merged.get('reason', '')}")
            return
        fix = self.fixes[rec.id]
        self.phase = "effective" if not all(_effective(fix, h) for h in rec.handles) else "warmup"
        self._phase_steps = 0

    def _decide(self, rec: FixRecord) -> None:
        before = self.baseline
        rec.before = list(before)
        rec.p_value = p_faster(before, rec.after)
        gain = 100.0 * (1.0 - _median(rec.after) / _median(before))
        figures = f"median {_median(before):.3f} -> {_median(rec.after):.3f} ms ({gain:+.1f} %), p = {rec.p_value:.2g}"
        if rec.p_value < ALPHA and gain >= MIN_GAIN_PCT:
            rec.decision, rec.why = "kept", f"faster: {figures} (needs p < {ALPHA} and gain >= {MIN_GAIN_PCT} %)"
            self._mark_phase()
            self.baseline = list(rec.after)
            self._next_fix()
        else:
            self._rollback(
                rec, f"not faster with confidence: {figures} (needs p < {ALPHA} and gain >= {MIN_GAIN_PCT} %)"
            )

    def _revert_all(self, rec: FixRecord) -> None:
        fix = self.fixes[rec.id]
        for h in reversed(rec.handles):
            if not h.reverted:
                fix.revert(h)
                h.reverted = True

    def _rollback(self, rec: FixRecord, why: str, advance: bool = True) -> None:
        self._revert_all(rec)
        rec.decision, rec.why = "rolled_back", why
        self._mark_phase()
        if advance:
            self._next_fix()
        else:
            self._write()

    def _abort(self, why: str) -> None:
        rec = self.current
        if rec is not None and rec.decision == "applied":
            try:
                self._rollback(rec, why, advance=False)
            except Exception:
                pass
        for r in self.queue:
            r.decision, r.why = "skipped", why
        self.queue = []
        self.phase = "done"
        self._write(note=why)

    def _mark_phase(self) -> None:
        """Start a new phase with the step after this one: the patch set just changed."""
        kept = [r.id for r in self.records if r.decision == "kept"]
        name = phase_name(kept, self.current.id if self.current and self.current.decision == "applied" else None)
        first = self._step + 1
        if self.phases and self.phases[-1]["first_step"] >= first:
            self.phases[-1] = {"name": name, "first_step": first}  # two changes within one step
        else:
            self.phases.append({"name": name, "first_step": first})

    # -- output --------------------------------------------------------------------------
    def finish(self) -> None:
        """At exit: note what could not be decided, and write ``patches.yaml`` a last time."""
        if self._finished:
            return
        self._finished = True
        needed = self.skip + self.k + 1
        if self.phase in ("wait", "baseline"):
            note = (
                f"the program ended after {self.steps_seen} step(s), before the baseline was measured "
                f"(auto-patch needs at least {needed} steps, plus {self.k + 2} per fix)"
            )
            try:
                self._diagnose()
            except Exception:
                pass
            for r in self.records:
                if r.decision == "pending":
                    r.decision, r.why = "skipped", f"called for ({r.why}), but {note}"
            self._write(note=note)
            return
        if self.current is not None and self.current.decision == "applied":
            self.current.why = (
                f"applied; the program ended during {self.phase} "
                f"({len(self.current.after)} of {self.k} steps measured), so it was neither kept nor rolled back"
            )
        for r in self.queue:
            r.decision, r.why = "skipped", f"called for ({r.why}), but the program ended first"
        self.queue = []
        self._write()

    def document(self, note: str | None = None) -> dict[str, Any]:
        """The ``patches.yaml`` document."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "stallscope-patches",
            "rank": self.rank_dir.name if self.rank_dir is not None else None,
            "patch_steps": self.k,
            "patch_steps_note": self.k_note,
            "skip": self.skip,
            "alpha": ALPHA,
            "min_gain_pct": MIN_GAIN_PCT,
            "phase": self.phase,
            "steps_seen": self.steps_seen,
            "context": {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in self.context.items()
                if k not in ("findings",)
            },
            "baseline": _samples(self.baseline) if self.baseline else None,
            "note": note,
            "phases": [dict(p) for p in self.phases],
            "fixes": [r.to_dict() for r in self.records],
        }

    def _write(self, note: str | None = None) -> None:
        if self.rank_dir is None:
            return
        try:
            doc = self.document(note)
            write_yaml(self.rank_dir / runformat.PATCHES, doc)
            if runformat.rank_of(self.rank_dir) == 0:
                # the report reads RUN/patches.yaml: rank 0's decisions stand for the run
                write_yaml(self.rank_dir.parent / runformat.PATCHES, doc)
        except OSError as exc:
            print(f"stallscope: cannot write {self.rank_dir / runformat.PATCHES}: {exc}", file=sys.stderr)


def plan_fix(fix_id: str, fix: Fix, roots: list[Any], loaders: list[Any], context: Mapping[str, Any]) -> FixRecord:
    """What auto-patch does with ``fix`` in this program: a ``pending`` record with its targets when it
    is called for, else a ``skipped`` record that says why (advisory, scope, no CUDA, no target,
    every target refused, or the fix's ``diagnose`` rule says no)."""
    rec = FixRecord(fix_id, scope=fix.scope)
    if fix.advisory:
        rec.why = f"advisory only: {fix.advisory}"
        return rec
    if fix.scope not in _SCOPE_ORDER:
        rec.why = (
            f"scope {fix.scope!r}: auto-patch finds models and DataLoaders in the live program; "
            f"apply this fix through its own API"
        )
        return rec
    if fix.requires_cuda and not context.get("cuda"):
        rec.why = "the model does not run on a CUDA device, so this fix has no effect"
        return rec
    where: list[Any] = loaders if fix.scope == "dataloader" else roots
    targets: list[Target] = []
    seen: set[str] = set()
    for root in where:
        try:
            found = fix.find_targets(root)
        except Exception as exc:
            rec.why = f"find_targets failed: {type(exc).__name__}: {exc}"
            return rec
        names = module_names(root) if fix.scope == "module" and hasattr(root, "named_modules") else {}
        for t in found:
            if fix.scope == "module" and id(t.obj) in names and not t.name:
                t.name = names[id(t.obj)]
            if t.name in seen:
                continue
            seen.add(t.name)
            reason = fix.why_not(t)
            if reason:
                rec.refused[t.name] = reason
            else:
                targets.append(t)
    if not targets:
        rec.why = (
            f"refused: {next(iter(rec.refused.values()))}"
            if rec.refused
            else f"no {fix.scope} target found"
            + (" (no DataLoader seen)" if fix.scope == "dataloader" and not loaders else "")
        )
        return rec
    verdict = fix.diagnose(targets[0], context)
    if not verdict.called_for:
        rec.why = verdict.why
        return rec
    rec.decision, rec.why = "pending", verdict.why
    rec.targets = [t.name for t in targets]
    rec.tolerance = fix.tolerance_for(targets[0]).to_dict()
    rec.handles = [PatchHandle(fix_id, t) for t in targets]  # placeholders until applied
    return rec


def _parity_record(
    module_results: list[ParityResult], own: list[dict[str, Any]], probes: int, tolerance: Mapping[str, Any]
) -> dict[str, Any]:
    """One parity record for a fix from its module checks and its own ``verify()`` records."""
    tol = Tolerance(**dict(tolerance)) if tolerance else Tolerance()
    merged = merge_results(module_results, tol).to_dict() if module_results else None
    if own:
        merged = {**(merged or {}), **{k: v for r in own for k, v in r.items()}}
        merged["passed"] = all(r.get("passed", False) for r in own) and all(r.passed for r in module_results)
    if merged is None:
        merged = {"passed": False, "reason": f"no input reached a patched module within {PARITY_WAIT_STEPS} steps"}
    if len(module_results) < probes:
        merged["modules_not_reached"] = probes - len(module_results)
    return merged


def _effective(fix: Fix, handle: PatchHandle) -> bool:
    check = getattr(fix, "effective", None)
    return True if check is None else bool(check(handle))


def _load_hooks(hooks: Any) -> Any:
    return hooks if hooks is not None else importlib.import_module("stallscope.profiler.hooks")


def attach(
    rank_dir: Path,
    patch_steps: int,
    *,
    hooks: Any = None,
    skip: int = 0,
    only: Sequence[str] | None = None,
    fixes: Mapping[str, Any] | None = None,
    findings: Sequence[Mapping[str, Any]] | None = None,
) -> AutoPatcher:
    """Start auto-patch in this process. The recorder calls ``attach(rank_dir, patch_steps, skip=...)``
    with the run's profile options (``skip``: steps before the trace window).

    ``only`` defaults to ``$STALLSCOPE_PATCH_ONLY`` (comma-separated fix ids; default all
    registered fixes).
    """
    if only is None and os.environ.get("STALLSCOPE_PATCH_ONLY"):
        only = [s.strip() for s in os.environ["STALLSCOPE_PATCH_ONLY"].split(",") if s.strip()]
    patcher = AutoPatcher(
        rank_dir, patch_steps, _load_hooks(hooks), skip=skip, fixes=fixes, only=only, findings=findings
    )
    patcher.hooks.add_step_listener(patcher.on_step)
    atexit.register(patcher.finish)
    patcher._write(note="waiting for the baseline steps")
    return patcher
