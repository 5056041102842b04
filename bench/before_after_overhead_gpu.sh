#!/usr/bin/env bash
# The per-step overhead benches on two commits, interleaved, in one GPU call (issue 18: the Recorder split).
# Here: mkdir -p .carry/before .carry/after; git archive OLD | tar -x -C .carry/before; git archive NEW | tar -x -C .carry/after
# Device: run with carry [.carry/before, .carry/after] as: R=1 REV=<NEW> bash bench/before_after_overhead_gpu.sh
# (the old tree runs with PYTHONPATH=. as code before the stallscope namespace needed; BENCH_REV of the old side is 4954295).
set -u
W=$OUT/work; mkdir -p $W
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .carry/after > $W/install.log 2>&1 || { tail $W/install.log; exit 3; }
python3 -c "import stallscope.profiler.recorder" || exit 3
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv; } > $W/env.txt
E="bench/event_cost_gpu.py --steps 12000 --only nothing_added,light_session_training_thread"
C="bench/overhead_components_gpu.py"
for r in $(seq 1 ${R:-2}); do
  mkdir -p $W/before$r $W/after$r
  (cd .carry/before && export BENCH_REV=4954295 OUT=$W/before$r PYTHONPATH=. && timeout 100 python3 $E > $W/before$r/e.log 2>&1 && timeout 80 python3 $C > $W/before$r/c.log 2>&1) || echo "before$r failed"
  (cd .carry/after && export BENCH_REV=$REV OUT=$W/after$r && timeout 100 python3 $E > $W/after$r/e.log 2>&1 && timeout 80 python3 $C > $W/after$r/c.log 2>&1) || echo "after$r failed"
  grep -h "added_us\|light_added\|light_session" $W/*$r/*.yaml | head -20
done
left=$(( 310 - SECONDS ))
echo "window confirm budget ${left}s"
if [ "${WINDOW:-0}" = 1 ] && [ $left -gt 60 ]; then
  (cd .carry/after && timeout $((left+20)) python3 bench/window_after_effect_gpu.py drive --matrix "resnet50:plain,stallscope" --runs 3 --deadline-s $left --name window-after-effect-confirm --out $W/window > $W/window.log 2>&1) || echo "window confirm rc=$?"
  tail -30 $W/window.log
fi
tar czf $OUT/results.tgz -C $W .
