"""Start-up patching for ``stallscope run --patch-from``: apply what an auto-patch run kept.

:func:`load_kept_fixes` reads the decisions (a run directory, a report's ``patches`` section or
a ``patches.yaml``); :func:`attach_from_report` applies those fixes to each root model at its
first forward and checks parity on that batch, reverting (one line on stderr) what fails.
No profiling and no measurement.
"""

from __future__ import annotations

import gc
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stallscope.fixes.base import Fix, PatchHandle, registered_fixes
from stallscope.fixes.parity import ParityProbe, ParityResult, check_parity, in_parity_check, unwrap_model
from stallscope.profiler import runformat
from stallscope.profiler.common import ToolError, read_yaml

__all__ = ["attach_from_report", "load_kept_fixes", "module_names", "patch_entries", "suspender"]


def module_names(root: Any) -> dict[int, str]:
    """Qualified name of every submodule of ``root``, by ``id`` of the module."""
    return {id(m): n for n, m in root.named_modules()}


def suspender(fix: Fix, handle: PatchHandle) -> Callable[[], Any]:
    """What parity calls for its reference run: ``fix.suspended(handle)`` as a context factory."""
    return lambda: fix.suspended(handle)


def load_kept_fixes(path: Path) -> list[str]:
    """Fix ids an earlier auto-patch run kept, from a run directory, a report (its ``patches``
    section) or a ``patches.yaml``. A fix counts as kept when every rank that decided kept it."""
    path = Path(path)
    if path.is_dir():
        candidates = [
            path / runformat.REPORT,
            *(d / runformat.PATCHES for _, d in runformat.rank_dirs(path)),
            path / runformat.PATCHES,
        ]
        docs = [read_yaml(p) for p in candidates if p.is_file()]
        if not docs:
            raise ToolError(
                f"{path}: no report.yaml or rank*/patches.yaml; run `stallscope profile --auto-patch` first"
            )
    else:
        docs = [read_yaml(path)]
    decisions: dict[str, list[str]] = {}
    for doc in docs:
        for entry in patch_entries(doc):
            decisions.setdefault(str(entry["id"]), []).append(str(entry.get("decision", "")))
    if not decisions:
        raise ToolError(
            f"{path}: no auto-patch decisions found (no `patches` section); "
            "profile with --auto-patch first, or use `stallscope patch plan` to see what applies"
        )
    return [i for i, ds in decisions.items() if ds and all(d == "kept" for d in ds)]


def patch_entries(doc: Any) -> list[Mapping[str, Any]]:
    """The auto-patch decisions (mappings with ``id`` and ``decision``) found anywhere in ``doc``:
    a ``patches.yaml`` document, a report's ``patches`` section, or a list of entries."""
    found: list[Mapping[str, Any]] = []
    if isinstance(doc, Mapping):
        fixes = doc.get("fixes")
        if isinstance(fixes, list) and all(isinstance(e, Mapping) and "id" in e and "decision" in e for e in fixes):
            return list(fixes)
        for v in doc.values():
            found += patch_entries(v)
    elif isinstance(doc, list):
        if doc and all(isinstance(e, Mapping) and "id" in e and "decision" in e for e in doc):
            return list(doc)
        for v in doc:
            found += patch_entries(v)
    return found


def _instance(fix: Fix | type[Fix]) -> Fix:
    """``fix`` itself, or a new instance where it is a class."""
    return fix() if isinstance(fix, type) else fix


class _StartupPatcher:
    """Applies kept fixes to each root module at its first forward, checks parity on that
    first batch, and reverts (with one line on stderr) what fails."""

    def __init__(
        self,
        fix_ids: Sequence[str],
        fixes: Mapping[str, Fix | type[Fix]] | None,
        loaders: Callable[[], list[Any]],
        log: Callable[[str], None],
    ) -> None:
        registry: dict[str, Fix | type[Fix]] = dict(fixes) if fixes is not None else dict(registered_fixes())
        self.fixes: dict[str, Fix] = {i: _instance(registry[i]) for i in fix_ids if i in registry}
        self.unknown = [i for i in fix_ids if i not in registry]
        self.loaders = loaders
        self.log = log
        self.handles: dict[str, list[PatchHandle]] = {}
        self.results: dict[str, list[Any]] = {}
        self.depth = 0
        self.roots_seen: dict[int, int] = {}
        self._hooks: list[Any] = []

    def install(self) -> None:
        import torch.nn.modules.module as m

        self._hooks = [
            m.register_module_forward_pre_hook(self._pre),
            m.register_module_forward_hook(self._post, always_call=True),
        ]
        for i in self.unknown:
            self.log(f"stallscope: fix {i!r} from the report is not known to this version; not applied")

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _post(self, module: Any, args: Any, out: Any) -> None:
        self.depth = max(0, self.depth - 1)

    def _pre(self, module: Any, args: tuple) -> None:
        if in_parity_check():
            return None
        self.depth += 1
        if self.depth != 1:
            return None
        count = self.roots_seen.get(id(module), 0)
        self.roots_seen[id(module)] = count + 1
        if count == 0:
            self._patch_root(module, args)
        elif count >= 1:  # a second iteration began: every root of the program has been seen
            self.remove()
            self.depth = 0
        return None

    def _patch_root(self, root: Any, args: tuple) -> None:
        model = unwrap_model(root)
        names = module_names(model)
        for fix_id, fix in self.fixes.items():
            where = self.loaders() if fix.scope == "dataloader" else [model]
            for obj in where:
                for t in fix.find_targets(obj):
                    if fix.scope == "module" and not t.name:
                        t.name = names.get(id(t.obj), "")
                    if fix.why_not(t) or any(h.target.name == t.name for h in self.handles.get(fix_id, [])):
                        continue
                    try:
                        h = fix.apply(t)
                    except Exception as exc:
                        self.log(f"stallscope: {fix_id}: could not apply to {t.name}: {type(exc).__name__}: {exc}")
                        continue
                    self.handles.setdefault(fix_id, []).append(h)
                    own = fix.verify(h)
                    if own is not None:
                        self._report(fix, h, own.get("passed", False), own.get("reason", ""))
                        continue
                    module = fix.parity_module(h)
                    if module is model:
                        res = check_parity(model, args, {}, suspender(fix, h), fix.tolerance_for(t), name=t.name)
                        self._report(fix, h, res.passed, res.reason, res)
                    elif module is not None:

                        def on_result(p: ParityProbe, r: ParityResult, fix: Fix = fix, h: PatchHandle = h) -> None:
                            self._report(fix, h, r.passed, r.reason, r)

                        ParityProbe(module, suspender(fix, h), fix.tolerance_for(t), on_result, name=t.name)

    def _report(self, fix: Fix, handle: PatchHandle, passed: bool, reason: str, result: Any = None) -> None:
        self.results.setdefault(fix.id, []).append(
            result if result is not None else {"passed": passed, "reason": reason}
        )
        if passed:
            figures = (
                f" (max rel err out {result.max_rel_err_out:.2g}, grad {result.max_rel_err_grad:.2g})"
                if result is not None
                else ""
            )
            if len(self.results[fix.id]) == 1:
                count = len(self.handles.get(fix.id, []))
                self.log(
                    f"stallscope: {fix.id} applied to {count} target(s) (e.g. {handle.target.name}); "
                    f"parity ok on the first batch{figures}"
                )
        else:
            if not handle.reverted:
                fix.revert(handle)
                handle.reverted = True
            self.log(
                f"stallscope: {fix.id} reverted on {handle.target.name}: parity failed on the first batch: {reason}"
            )


def attach_from_report(
    report: str | Path,
    *,
    fixes: Mapping[str, Fix | type[Fix]] | None = None,
    hooks: Any = None,
    log: Callable[[str], None] | None = None,
) -> _StartupPatcher:
    """Apply the fixes an earlier auto-patch run kept (``stallscope run --patch-from``).

    Called by the bootstrap when ``STALLSCOPE_PATCH_FROM`` is set, before the user's code runs.
    The fixes are applied to each root module at its first forward (found with a global module
    forward pre-hook that removes itself once a second iteration starts) and checked for
    parity on that first batch; a fix that fails is reverted with one line on stderr.
    """
    fix_ids = load_kept_fixes(Path(report))
    emit = log or (lambda s: print(s, file=sys.stderr))

    def loaders() -> list[Any]:
        h = hooks
        if h is None:
            try:
                h = importlib.import_module("stallscope.profiler.hooks")
            except ImportError:
                h = None
        seen = list(h.dataloaders()) if h is not None and hasattr(h, "dataloaders") else []
        if seen:
            return seen
        # No profiler in this process: find the DataLoaders once, at the first forward (torch is
        # imported by then; importing it here keeps `stallscope patch plan` free of it).
        from torch.utils.data import DataLoader

        with warnings.catch_warnings():  # isinstance() on some torch objects warns of deprecations
            warnings.simplefilter("ignore")
            return [o for o in gc.get_objects() if isinstance(o, DataLoader)]

    patcher = _StartupPatcher(fix_ids, fixes, loaders, emit)
    if not fix_ids:
        emit(f"stallscope: {report}: the earlier auto-patch run kept no fix; running unpatched")
        return patcher
    patcher.install()
    return patcher
