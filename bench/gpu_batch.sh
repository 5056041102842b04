#!/usr/bin/env bash
# Run several GPU scripts in one device call. Usage (from the repo root, on the GPU machine):
#   OUT=/some/dir bash bench/gpu_batch.sh "name1:seconds:command ..." "name2:seconds:command ..."
# Each command runs with its own time limit and its own log; results written under $OUT/<name>/
# by the command (it sees OUT=$OUT/<name>) are packed into $OUT/batch.tar.gz at the end, because
# the device tool returns at most 8 files.
set -u
root_out=${OUT:?set OUT}
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch;print("torch", torch.__version__, torch.version.cuda)'; } > "$root_out/env.txt" 2>&1
summary="$root_out/summary.txt"; : > "$summary"
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}; secs=${rest%%:*}; cmd=${rest#*:}
  mkdir -p "$root_out/$name"
  start=$(date +%s)
  OUT="$root_out/$name" timeout --signal=INT --kill-after=10 "$secs" bash -c "$cmd" > "$root_out/$name/log.txt" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$summary"
  tail -n 15 "$root_out/$name/log.txt" | sed "s/^/  [$name] /"
done
tar -czf "$root_out/batch.tar.gz" -C "$root_out" --exclude=batch.tar.gz . 2>/dev/null
find "$root_out" -mindepth 1 -maxdepth 1 ! -name batch.tar.gz ! -name summary.txt ! -name env.txt -exec rm -rf {} +
cat "$summary"
