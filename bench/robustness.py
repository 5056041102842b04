"""Robustness of the CLI: >= 1,000 hostile inputs through the real commands, counted by outcome.

    python3 bench/robustness.py [--cases 1200] [--seed 0] [--time-limit 20] [--out bench/results/robustness.yaml]

Seeds are real: a CPU torch.profiler trace and a ``stallscope profile`` run directory recorded
here into a temporary folder, the reports ``stallscope diagnose`` writes of them, two GPU traces
of tests/fixtures and a gate.yaml with every kind of rule. Each case is a seed with hostile values
put where values belong (ids above 2^63, lists where ids belong, ``ProfilerStep#<huge>``, deep
nesting, lone surrogates, NaN ...), hostile bytes (truncation, invalid UTF-8, cut gzip) or a
hostile file layout, run through ``stallscope diagnose | compare | gate | report``.

Every case runs the CLI in a forked child of this process (the modules are imported once, so a
case costs tens of ms; an interpreter crash or a hang cannot take the fuzzer down) under SIGALRM.
Outcomes: ``reports`` (exit 0, or the gate's verdicts 1 and 3), ``usage_errors`` (exit 2 and one
line ``stallscope: error: ...`` on stderr), ``internal_errors`` (anything else: exit 70, another
code, a traceback, a signal, exit 2 with more than one line, an input file changed) and
``over_time`` (past the time limit).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this file's siblings as the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hostile import run_cli  # noqa: E402 - after the path fix above
from bench.hostile_cases import KINDS, Case, Seeds, make_case, named_cases, record_seeds  # noqa: E402
from bench.recorded import recorded_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARE = {"trace": 0.42, "report": 0.22, "rundir": 0.2, "gateconfig": 0.16}
OUTCOMES = ("reports", "usage_errors", "internal_errors", "over_time")
GATE_VERDICTS = frozenset({0, 1, 3})


def classify(argv: list[str], code: int, stderr: str, changed: bool = False) -> str:
    """The outcome of one CLI run (see the module doc); ``changed``: an input file was modified."""
    if changed or "Traceback" in stderr:
        return "internal_errors"
    if code in (GATE_VERDICTS if argv[:1] == ["gate"] else {0}):
        return "reports"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 2 and len(lines) == 1 and lines[0].startswith("stallscope: error: "):
        return "usage_errors"
    return "internal_errors"


def _digests(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        try:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"
        except OSError:
            out[str(p)] = "unreadable"
    return out


def run_forked(case: Case, limit_s: int) -> tuple[str, int, float, str]:
    """Run ``case`` in a forked child under SIGALRM: (outcome, exit code or -signal, seconds, stderr)."""
    before = _digests(case.inputs)
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run, report through the pipe, leave without cleanup handlers
        os.close(r)
        try:
            signal.alarm(limit_s)
            try:
                code, _, err = run_cli(case.argv)
            except BaseException:  # noqa: BLE001 - whatever escaped the CLI is the finding
                code, err = -1, traceback.format_exc()
            err = err if len(err) <= 6000 else err[:3000] + "\n[...]\n" + err[-3000:]
            os.write(w, json.dumps({"code": code, "stderr": err}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        outcome = "over_time" if sig == signal.SIGALRM else "internal_errors"
        return outcome, -sig, seconds, f"killed by signal {signal.Signals(sig).name}"
    try:
        result = json.loads(data)
    except ValueError:
        return "internal_errors", -1, seconds, "the child exited without a result"
    changed = _digests(case.inputs) != before
    err = result["stderr"] + ("\n(an input file was changed)" if changed else "")
    return classify(case.argv, result["code"], result["stderr"], changed), result["code"], seconds, err


def _warm_up(seeds: Seeds) -> None:
    """Import every command's modules in this process, so that the forked children start warm."""
    run_cli(["diagnose", str(seeds.trace_paths[0]), "-f", "md"])
    run_cli(["compare", str(seeds.report_path), str(seeds.trace_report_path)])
    run_cli(["gate", "-q", "--baseline", str(seeds.report_path), str(seeds.report_path)])
    run_cli(["report", str(seeds.report_path), "--html", str(seeds.root / "warm.html")])


def run_all(
    n_cases: int, seed: int, limit_s: int, work: Path, keep: Path | None = None, seeds_dir: Path | None = None
) -> dict:
    """Record the seeds, generate and run ``n_cases`` random cases plus the named ones; the figures.
    ``keep``: a folder to copy the files of every failing case into; ``seeds_dir``: where the seeds
    are recorded (reused when a recording is there)."""
    seeds = record_seeds(seeds_dir or work / "seeds")
    _warm_up(seeds)
    os.environ.pop("GITHUB_STEP_SUMMARY", None)
    rng = random.Random(seed)
    plan = [(k, None) for k in KINDS for _ in range(round(n_cases * SHARE[k]))]
    rng.shuffle(plan)
    counts = {k: dict.fromkeys(("cases", *OUTCOMES), 0) for k in KINDS}
    failures: list[dict] = []
    named_outcomes: dict[str, str] = {}
    slowest = (0.0, "")
    named = named_cases(seeds, work / "named")
    todo: list[tuple[str, Case | None]] = [(c.kind, c) for c in named] + plan
    for i, (kind, case) in enumerate(todo):
        case_dir = work / f"case{i}"
        case_dir.mkdir()
        if case is None:
            case = make_case(kind, seeds, rng, case_dir)
        outcome, code, seconds, err = run_forked(case, limit_s)
        err = err.replace(str(work), "<tmp>")
        counts[kind]["cases"] += 1
        counts[kind][outcome] += 1
        if i < len(named):
            named_outcomes[case.label] = (
                f"{outcome} (exit {code}): {err.strip().splitlines()[-1][:160] if err.strip() else ''}"
            )
        if seconds > slowest[0]:
            slowest = (seconds, case.label)
        if outcome in ("internal_errors", "over_time"):
            if code == 70:  # again with --debug: the traceback's last frames say where
                err = run_forked(Case(kind, case.label, ["--debug", *case.argv]), limit_s)[3].replace(
                    str(work), "<tmp>"
                )
            argv = [a.replace(str(work), "<tmp>") for a in case.argv]
            failures.append({"kind": kind, "label": case.label, "argv": argv, "code": code, "stderr": err[-900:]})
            print(f"[{outcome}] {kind} {case.label}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
            if keep is not None:
                shutil.copytree(case_dir, keep / f"case{i}", symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(case_dir, ignore_errors=True)
    totals = {o: sum(c[o] for c in counts.values()) for o in ("cases", *OUTCOMES)}
    return {
        **totals,
        "named_cases": named_outcomes,
        "by_kind": counts,
        "time_limit_s": limit_s,
        "slowest_case_s": round(slowest[0], 2),
        "slowest_case": slowest[1],
        "failures": failures[:50],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the fuzz, write the figures; exit 1 on an internal error or over time."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1200, help="random cases besides the named ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=int, default=20, help="seconds per case")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "robustness.yaml")
    ap.add_argument("--keep-failures", type=Path, help="copy the files of failing cases here")
    ap.add_argument("--seeds-dir", type=Path, help="record the seeds here, or reuse the ones recorded here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stallscope-robustness-") as tmp:
        figures = run_all(args.cases, args.seed, args.time_limit, Path(tmp), args.keep_failures, args.seeds_dir)
    import msgspec
    import orjson
    import yaml

    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": recorded_command([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], args.out.parent),
        "machine": f"{platform.node()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "msgspec": msgspec.__version__,
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - t0, 1),
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=False, width=120))
    print({k: record[k] for k in ("cases", *OUTCOMES)})
    return 1 if record["internal_errors"] or record["over_time"] else 0


if __name__ == "__main__":
    sys.exit(main())
