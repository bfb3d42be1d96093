#!/usr/bin/env bash
# Train on a lent GPU machine (JAX, no TensorFlow, no network), for a bounded time.
#
#   here:   python tools/prepare_device.py --config configs/train-davis.json
#   device: run(command="bash tools/train_on_device.sh 25 runs/davis", carry=[".whl", ".devdata"])
#
# Resume a previous run: copy its checkpoint (the files the last call brought back) into
# runs/<name>/checkpoints/step_NNNNNNN/ with runs/<name>/config.json, write the folder name into
# runs/<name>/checkpoints/latest, and carry runs/<name> too: the script then resumes it.
# Leaves in $OUT the newest checkpoint (npz shards of at most 15 MiB, state.json) and
# metrics.jsonl: at most 8 files, as the device tool brings back.
set -euo pipefail
minutes="${1:?minutes of training}"
run="${2:?run folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
python3 tools/prepare_device.py --unpack
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -f "$run/checkpoints/latest" ]; then
  args=(--out "$run" --resume)
else
  args=(--config .devdata/config.json --out "$run")
fi
status=0
# At the time limit timeout sends SIGTERM: training finishes its step, checkpoints it and stops
# (timeout then exits 124); SIGKILL only if that takes over two minutes.
timeout --kill-after=120 "$((minutes * 60))" python3 -m vostrack train "${args[@]}" -q || status=$?
[ "$status" -eq 124 ] && echo "stopped after $minutes minutes (resume to continue)"
[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && exit "$status"
latest="$run/checkpoints/$(cat "$run/checkpoints/latest")"
mkdir -p "$OUT/checkpoint"
cp "$latest"/* "$OUT/checkpoint/"
cp "$run/config.json" "$OUT/checkpoint/run-config.json"
tail -n 200 "$run/metrics.jsonl" > "$OUT/metrics.jsonl"
ls -la "$OUT" "$OUT/checkpoint"
