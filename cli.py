"""stallscope command line: parse, call the packages, render, set the exit code. Nothing else.

Every command imports its implementation lazily so ``stallscope --help`` starts without torch.
User errors are :class:`profiler.common.ToolError`: one line on stderr, its exit code (2 for
usage), a traceback only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Optional

# The name of the fix advice diagnose passes (stallscope.fixes.advice_for): part of the report
# cache's key for markdown (analyzers/reportcache.py callable_id), known here without the import.
FIX_ADVICE_ID = "stallscope.fixes.base.advice_for"
_fast_path_tried = False


def error_exit(exc: BaseException, debug: bool) -> int:
    """One line on stderr for ``exc`` and the exit code that means it: a ToolError (bad input or
    use) its own code (2 for usage), Ctrl-C 130, anything else a bug, 70. ``debug`` adds the
    traceback and changes no code. Shared by typer's commands and the diagnose fast path."""
    from stallscope.profiler.common import EXIT_INTERNAL, ToolError

    if isinstance(exc, KeyboardInterrupt):
        print("stallscope: interrupted", file=sys.stderr, flush=True)
        return 130
    if debug:
        import traceback  # here: its import (linecache, tokenize) is a few ms of every start

        traceback.print_exception(exc)
    if isinstance(exc, ToolError):
        print(f"stallscope: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(
        f"stallscope: internal error: {exc.__class__.__name__}: {exc}; this is a bug in stallscope: please "
        "report it with the output of the same command run with --debug",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_INTERNAL


def diagnose_fast(argv: list[str]) -> None:
    """A plain ``diagnose TARGET [-f FMT] [-o FILE]`` (what :func:`reportcache.parse_diagnose`
    accepts) runs here, before typer loads: from the report cache when it holds the answer, else
    diagnosed directly, then exits with the command's code. Typer would add 0.2-0.3 s (it
    validates options through pydantic) to a diagnosis of a small trace that takes about as long.
    Anything else (help, other options, other commands) returns, once per process, for typer."""
    global _fast_path_tried
    if _fast_path_tried or not argv or argv[0] != "diagnose":
        return
    _fast_path_tried = True
    from stallscope.analyzers import reportcache

    request = reportcache.parse_diagnose(argv)
    if request is None:
        return
    try:
        hit = reportcache.lookup(argv, advice=FIX_ADVICE_ID)
    except Exception:  # the cache only saves time: whatever goes wrong in it, diagnose as usual
        hit = None
    if hit is not None:
        fix_advice = None
        if hit.request.fmt == "console":  # drawn again by rich, with the advice under each fix
            from stallscope.fixes import advice_for

            fix_advice = advice_for
        if reportcache.serve(hit, fix_advice):
            exit_now(0)
    if "numpy" not in sys.modules:
        # Diagnosis does no linear algebra: one OpenBLAS thread spares numpy's import starting
        # one per core (~20 ms on 2 cores, more on big hosts). A value the user set is kept, and
        # this process runs no user code that could want more.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from stallscope.analyzers.command import diagnose_command

        fix_advice = None
        if request.fmt in ("console", "md"):  # the texts that show fix advice; yaml / json skip the fixes' import
            from stallscope.fixes import advice_for

            fix_advice = advice_for
        code = diagnose_command(request.target, output=request.output, fmt=request.fmt, fix_advice=fix_advice)
    except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - error_exit sorts usage from bugs
        code = error_exit(exc, debug=False)
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once its output is out, without the interpreter's teardown:
    freeing every module and object one by one (numpy's, the event table's) takes ~30 ms of a
    0.2 s diagnosis, and the operating system frees them at once. ``atexit`` handlers still run.
    The usual exit where that is not safe: other threads still running, or output that could not
    be flushed (a closed pipe keeps its usual message and code)."""
    import atexit
    import threading

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    if threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):  # what a handler printed
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # `python3 -m stallscope.cli`: a plain diagnose runs before typer loads
    diagnose_fast(sys.argv[1:])

import typer  # noqa: E402

from stallscope.profiler.common import EXIT_USAGE, ToolError, __version__  # noqa: E402

app = typer.Typer(
    name="stallscope",
    help="Profile a PyTorch run on NVIDIA GPUs, name what holds it back, fix it, guard it in CI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
patch_app = typer.Typer(help="Plan patches from a report.", no_args_is_help=True)
app.add_typer(patch_app, name="patch")

_state = {"debug": False}
PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


class OneLineUsageErrors(typer.core.TyperCommand):
    """Bad option values as one line on stderr and exit 2 (instead of a usage panel)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        usage_errors = []
        for mod in ("click.exceptions", "typer._click.exceptions"):  # typer >= 0.29 vendors click
            try:
                usage_errors.append(__import__(mod, fromlist=["UsageError"]).UsageError)
            except (ImportError, AttributeError):
                pass
        try:
            return super().parse_args(ctx, args)
        except tuple(usage_errors) as exc:
            typer.echo(f"stallscope: error: {exc.format_message()}; see `stallscope {ctx.info_name} --help`", err=True)
            raise typer.Exit(EXIT_USAGE) from None

    def get_params(self, ctx: Any) -> list[Any]:
        """The parameters, with on/off flags (``--help`` too) shown without a ``<bool>`` value in help."""
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False):
                p.metavar = ""
        return params


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stallscope {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """stallscope: profile, diagnose, auto-patch, gate."""
    _state["debug"] = debug


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line and a code that means one thing: a ToolError (bad input or use) exits with its code
    (2 for usage), with or without --debug; an unexpected exception is a bug, exit 70. --debug adds
    the traceback and changes no exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - error_exit sorts usage from bugs
            raise typer.Exit(error_exit(exc, _state["debug"])) from None

    return wrapper


def _after_window(run_dir: Path) -> None:
    """Add the window's after-effect to meta.yaml and say it when the later steps were slower.
    Never changes the exit code: a failure here is one line on stderr."""
    from stallscope.analyzers.overhead import describe, record_after_window

    try:
        line = describe(record_after_window(run_dir) or {})
    except Exception as exc:  # the target's exit code stands whatever this figure does
        line = f"after-window figure not computed: {exc.__class__.__name__}: {exc}"
    if line:
        typer.echo(f"stallscope: {line}", err=True)


def _diagnose_profiled(run_dir: Path, deep: bool) -> None:
    """Diagnose a run that `profile` or `demo` just wrote. The exit code stays the target's: a
    diagnosis that fails is one line on stderr, the run directory is there to diagnose again."""
    from stallscope.analyzers.command import diagnose_command
    from stallscope.fixes import advice_for

    try:
        diagnose_command(run_dir, deep=deep, debug=_state["debug"], fix_advice=advice_for)
    except ToolError as exc:
        typer.echo(f"stallscope: diagnosis skipped: {exc}", err=True)
        return
    except Exception as exc:
        typer.echo(f"stallscope: diagnosis failed: {exc.__class__.__name__}: {exc}", err=True)
        return
    typer.echo(_next_steps(run_dir), err=True)


def _next_steps(run_dir: Path) -> str:
    """What to run next after a profile's diagnosis: the page, the YAML, the fixes."""
    from stallscope.profiler import runformat

    run = shlex.quote(str(run_dir))
    try:
        argv = runformat.read_meta(run_dir).get("command")
    except ToolError:
        argv = None
    cmd = " ".join(shlex.quote(str(a)) for a in argv) if isinstance(argv, list) and argv else "CMD"
    command = f"stallscope profile --auto-patch -- {cmd}"
    return (
        f"next: stallscope report {run} --html report.html   (charts, one offline page)\n"
        f"      stallscope diagnose {run} -o report.yaml   (these findings as YAML, for scripts and `compare`)\n"
        f"      {command}   (apply the fixes it calls for, verify, keep what is faster)"
    )


@app.command(context_settings=PASSTHROUGH, cls=OneLineUsageErrors, options_metavar="[OPTIONS] -- CMD [ARGS]...")
@user_errors
def profile(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (default ./stallscope-runs/<UTC time>-<script>/)."
    ),
    skip: int = typer.Option(5, "--skip", help="Steps before the full trace window (0 or more)."),
    steps: int = typer.Option(5, "--steps", help="Steps in the full trace window (1 or more)."),
    sample_hz: float = typer.Option(25.0, "--sample-hz", help="NVML / host sampling rate (0.1-1000)."),
    stack: bool = typer.Option(False, "--stack", help="Record Python stacks in the window."),
    memory: bool = typer.Option(False, "--memory", help="Record allocator events in the window."),
    no_diagnose: bool = typer.Option(False, "--no-diagnose", help="Do not diagnose the run at the end."),
    auto_patch: bool = typer.Option(
        False, "--auto-patch", help="Apply the fixes the diagnosis calls for; keep what is faster."
    ),
    patch_steps: int = typer.Option(
        20, "--patch-steps", help="Steps measured before and after each patch (2 or more)."
    ),
    deep: bool = typer.Option(False, "--deep", help="Run Nsight Compute on the top kernels when available."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live status."),
) -> None:
    """Run CMD (after `--`) under the profiler and write a run directory."""
    from stallscope.profiler.command import profile_command
    from stallscope.profiler.options import ProfileOptions

    options = ProfileOptions.from_user(
        skip=skip,
        steps=steps,
        sample_hz=sample_hz,
        stack=stack,
        memory=memory,
        auto_patch=auto_patch,
        patch_steps=patch_steps,
    )
    result = profile_command(
        list(ctx.args), options, out=out, diagnose=not no_diagnose, deep=deep, quiet=quiet, after_run=_after_window
    )
    if result.diagnose:
        _diagnose_profiled(result.run_dir, deep)
    raise typer.Exit(result.exit_code)


@app.command(cls=OneLineUsageErrors)
@user_errors
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory for the demo."),
) -> None:
    """Profile and diagnose a small bundled workload with a real bottleneck."""
    from stallscope.profiler.demo import run_demo

    result = run_demo(out=out)
    if result.diagnose:
        _diagnose_profiled(result.run_dir, deep=False)
    raise typer.Exit(result.exit_code)


@app.command(cls=OneLineUsageErrors)
@user_errors
def diagnose(
    target: Path = typer.Argument(..., help="A run directory, a trace (.json/.json.gz) or a folder of traces."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report here."),
    fmt: str = typer.Option("console", "--format", "-f", help="Output format.", metavar="[console|yaml|json|md]"),
    deep: bool = typer.Option(False, "--deep", help="Run Nsight Compute on the top kernels when available."),
    annotated_trace: Optional[Path] = typer.Option(
        None, "--annotated-trace", help="Write the trace with findings on the timeline."
    ),
) -> None:
    """Diagnose a run directory or torch.profiler trace(s): findings ranked by impact."""
    from stallscope.analyzers.command import diagnose_command
    from stallscope.fixes import advice_for

    raise typer.Exit(
        diagnose_command(
            target,
            output=output,
            fmt=fmt,
            deep=deep,
            annotated_trace=annotated_trace,
            debug=_state["debug"],
            fix_advice=advice_for,
        )
    )


class _GateGroup(typer.core.TyperGroup):
    """`stallscope gate --baseline B CURRENT` runs the default subcommand `check`; `gate ab` is paired mode."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["check", *args]
        return super().parse_args(ctx, args)


gate_app = typer.Typer(
    cls=_GateGroup,
    no_args_is_help=True,
    help="CI performance gate. `stallscope gate --baseline BASE CURRENT` (the default `check`) or `stallscope gate ab ...`. "
    "Exit 0 pass, 1 regression, 3 inconclusive, 2 usage or tool error.",
)
app.add_typer(gate_app, name="gate")


@gate_app.command("check", cls=OneLineUsageErrors)
@user_errors
def gate_check(
    current: Path = typer.Argument(
        ..., help="The current report (.yaml/.json), run directory, or a folder of reports (one per run)."
    ),
    baseline: Path = typer.Option(
        ..., "--baseline", "-b", help="The baseline report, run directory, or a folder of reports (one per run)."
    ),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        "-c",
        help="gate.yaml with the rules (default: step time median 3 %, p90 10 %, no new high finding).",
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the verdict as YAML here."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per rule)."),
    allow_env_change: bool = typer.Option(
        False, "--allow-env-change", help="Judge even if GPU, driver, torch, CUDA or clocks differ."
    ),
    update_baseline: bool = typer.Option(
        False,
        "--update-baseline",
        help="Accept CURRENT as the new baseline (atomic copy to --baseline; into a baseline folder: added as a "
        "new run, the newest `baseline_runs` kept) and exit 0.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No console table."),
) -> None:
    """Compare CURRENT with the baseline: exit 1 on a real regression, not on noise (the default subcommand)."""
    from stallscope.analyzers.gate.command import gate_command

    raise typer.Exit(
        gate_command(
            current,
            baseline,
            config=config,
            output=output,
            junit=junit,
            allow_env_change=allow_env_change,
            update=update_baseline,
            quiet=quiet,
        )
    )


@gate_app.command("ab", cls=OneLineUsageErrors)
@user_errors
def gate_ab(
    base_cmd: str = typer.Option(..., "--base-cmd", help="The base command, quoted (e.g. 'python train.py')."),
    head_cmd: str = typer.Option(..., "--head-cmd", help="The head command, quoted."),
    rounds: int = typer.Option(
        10, "--rounds", "-n", min=1, help="A B rounds, interleaved (10 catch a 5 % slowdown; docs/ci.md)."
    ),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Steps dropped at the start of every run."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gate.yaml with the rules."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the verdict as YAML here."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per rule)."),
    workdir: Optional[Path] = typer.Option(
        None, "--workdir", help="Where the runs go (default ./stallscope-runs/gate-ab-<UTC time>/)."
    ),
    profile_args: str = typer.Option(
        "", "--profile-args", help="Extra options for stallscope profile, quoted (e.g. '--skip 5 --steps 2')."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines or console table."),
) -> None:
    """Paired mode: run base and head interleaved (A B A B ...) in this job, then gate head against base."""
    from stallscope.analyzers.gate.paired import ab_command

    raise typer.Exit(
        ab_command(
            base_cmd,
            head_cmd,
            rounds=rounds,
            warmup=warmup,
            config=config,
            output=output,
            junit=junit,
            workdir=workdir,
            profile_args=profile_args,
            quiet=quiet,
        )
    )


@patch_app.command("plan", cls=OneLineUsageErrors)
@user_errors
def patch_plan(
    report: Path = typer.Argument(..., help="A report (.yaml/.json) or a run directory."),
    fmt: str = typer.Option("console", "--format", "-f", help="Output format.", metavar="[console|yaml]"),
) -> None:
    """Print which fixes the report's findings call for, why, and what an earlier auto-patch run decided."""
    from stallscope.fixes.command import plan_command

    raise typer.Exit(plan_command(report, fmt=fmt))


@app.command(context_settings=PASSTHROUGH, cls=OneLineUsageErrors, options_metavar="[OPTIONS] -- CMD [ARGS]...")
@user_errors
def run(
    ctx: typer.Context,
    patch_from: Path = typer.Option(
        ..., "--patch-from", help="Report, run directory or patches.yaml of an earlier --auto-patch run."
    ),
) -> None:
    """Run CMD (after `--`) with the fixes an earlier auto-patch run kept; no profiling, parity checked on the first batch."""
    from stallscope.fixes.command import run_command

    raise typer.Exit(run_command(list(ctx.args), patch_from))


@app.command(cls=OneLineUsageErrors)
@user_errors
def report(
    target: Path = typer.Argument(..., help="A run directory, a trace, a folder of traces, or a report."),
    html_out: Path = typer.Option(..., "--html", help="Write a self-contained HTML report here."),
) -> None:
    """Write an offline HTML report with charts (breakdown, NVML timeline, roofline)."""
    from stallscope.analyzers.present import report_command
    from stallscope.fixes import advice_for

    raise typer.Exit(report_command(target, html_out, debug=_state["debug"], fix_advice=advice_for))


@app.command(cls=OneLineUsageErrors)
@user_errors
def compare(
    a: Path = typer.Argument(..., help="Before: a report, a trace or a run directory."),
    b: Path = typer.Argument(..., help="After: a report, a trace or a run directory."),
    fmt: str = typer.Option("console", "--format", "-f", help="Output format.", metavar="[console|md|yaml]"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the comparison (.md or .yaml)."),
) -> None:
    """Compare two runs: step time with the gate's statistics, breakdown, kernels, findings."""
    from stallscope.analyzers.present import compare_command

    raise typer.Exit(compare_command(a, b, fmt=fmt, output=output, debug=_state["debug"]))


HELP_STORE = Path(__file__).with_name("cli_help.json")
# Settings that change what typer prints for --help: with any of them set, typer renders it.
_HELP_ENV = (
    "COLUMNS",
    "TERMINAL_WIDTH",
    "FORCE_COLOR",
    "PY_COLORS",
    "NO_COLOR",
    "GITHUB_ACTIONS",
    "_TYPER_FORCE_DISABLE_TERMINAL",
)


def help_variant(tty: bool, columns: int, env: dict[str, str]) -> str | None:
    """Which stored rendering of ``--help`` matches this output: ``plain`` (not a terminal: typer
    prints 80 columns without colour), ``ansi80`` / ``ansi100`` (a colour terminal at least that
    wide), or None when only typer itself can render it (a narrow or dumb terminal, a width or
    colour setting in the environment)."""
    if any(env.get(k) for k in _HELP_ENV):
        return None
    if not tty:
        return "plain"
    if columns < 80 or env.get("TERM", "dumb") == "dumb":
        return None
    return "ansi100" if columns >= 100 else "ansi80"


def stored_help(argv: list[str], variant: str | None) -> str | None:
    """The stored ``--help`` text of ``argv`` (``[COMMAND...] --help``) in ``variant``, or None.

    ``cli_help.json`` holds typer's own rendering of every command's help, written by
    ``python3 -m tests.cli_help_store`` and checked against typer by tests/test_cli_help.py; it
    spares a help request typer's rendering imports (~0.2 s of pydantic and rich)."""
    if variant is None or not argv or argv[-1] != "--help" or any(a.startswith("-") for a in argv[:-1]):
        return None
    try:
        doc = json.loads(HELP_STORE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != help_store_key():
        return None
    text = (doc.get(variant) or {}).get(" ".join(argv[:-1]))
    return text if isinstance(text, str) else None


def help_store_key() -> str:
    """What the stored help was rendered from: this file's source, stallscope's and typer's versions
    (a store written for other code is never used)."""
    import hashlib  # only here: a diagnose never needs it, and it loads OpenSSL (~3 ms)

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{__version__}/typer-{getattr(typer, '__version__', '?')}/cli-{digest}"


def entry() -> None:
    """The ``stallscope`` command: a plain diagnose before typer loads (:func:`diagnose_fast`),
    ``--help`` from the stored rendering when it matches this terminal, everything else through typer."""
    diagnose_fast(sys.argv[1:])
    tty = sys.stdout.isatty()
    text = stored_help(sys.argv[1:], help_variant(tty, shutil.get_terminal_size().columns, dict(os.environ)))
    if text is not None:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise SystemExit(0)
    app()


if __name__ == "__main__":  # pragma: no cover
    entry()
