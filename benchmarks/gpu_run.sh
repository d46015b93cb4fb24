#!/usr/bin/env bash
# Start (or find running) the GPU benchmark in the background, then wait up to WAIT seconds for it, printing
# progress. Meant for a lent GPU machine whose commands have a time limit: call it again (same machine) to keep
# waiting; a fresh machine resumes the runs from runs/bench if that folder travelled along.
#   WAIT=540 bash benchmarks/gpu_run.sh            (data from $SELFSUP_DATA, default ./.data)
#   MODE=stream WAIT=540 bash benchmarks/gpu_run.sh
#       data larger than the budget, streamed: a generated 3x224x224 uint8 .npy of 1.5 x BUDGET (default 4GiB),
#       ResNet-18 SimCLR images/s streamed (--memory-budget BUDGET) against in memory (the whole set on the GPU)
#       and the compute-only step, STEPS (default 300) steps each (benchmarks/stream.py; its JSON in result.json)
set -u
WAIT=${WAIT:-540}
MODE=${MODE:-fmnist}
if [ "$MODE" = stream ]; then
  BENCH_OUT=${BENCH_OUT:-runs/bench_stream}
  BUDGET=${BUDGET:-4GiB}
  ARGS=${BENCH_ARGS:---device cuda --sets generated --image-size 224 --factor 1.5 --memory-budget $BUDGET \
--steps ${STEPS:-300} --threads 8 --compute-steps 30 --root ${STREAM_ROOT:-/tmp/stream_bench}}
  ARGS="$ARGS --pretrain-args '--backbone resnet18 --batch-size 256'"
  SCRIPT=benchmarks/stream.py
else
  # By default the joint-embedding methods (registry names; one this checkout lacks is skipped), then SimCLR and
  # MoCo v2, each train 200 epochs of ResNet-18 at batch 512, one after another, and result.json ends with their
  # table (kNN, tuned kNN, linear, 1%-label linear on the test split, s/epoch). SimCLR alone, as before:
  #   BENCH_ARGS="--short 30 --long 200 --compile" bash benchmarks/gpu_run.sh
  BENCH_OUT=${BENCH_OUT:-runs/bench}
  METHODS=${BENCH_METHODS:-byol,simsiam,barlow_twins,vicreg,dino,mocov3,simclr,moco}
  ARGS=${BENCH_ARGS:---methods $METHODS --short 0 --long 200 --compile}
  ARGS="$ARGS --out '$BENCH_OUT'"
  SCRIPT=benchmarks/simclr_fmnist.py
fi
export SELFSUP_DATA=${SELFSUP_DATA:-$PWD/.data}
export PYTHONUNBUFFERED=1
mkdir -p "$BENCH_OUT"
# The package runs from this checkout: nothing to install (the device machine has every dependency, no registry).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
running() { [ -f "$BENCH_OUT/pid" ] && kill -0 "$(cat "$BENCH_OUT/pid")" 2>/dev/null; }
if ! running; then
  rm -f "$BENCH_OUT/exit_code"
  # The inner shell writes its own pid: it lives exactly as long as the benchmark.
  setsid nohup bash -c "echo \$\$ > '$BENCH_OUT/pid'; python3 $SCRIPT $ARGS \
    > '$BENCH_OUT/result.json' 2> '$BENCH_OUT/log.txt'; echo \$? > '$BENCH_OUT/exit_code'" >/dev/null 2>&1 &
  sleep 1
  echo "started: $SCRIPT $ARGS"
else
  echo "rejoined the running benchmark (pid $(cat "$BENCH_OUT/pid"))"
fi
start=$(date +%s)
while [ ! -f "$BENCH_OUT/exit_code" ] && [ $(( $(date +%s) - start )) -lt "$WAIT" ]; do sleep 5; done
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
grep -v "^\s*$" "$BENCH_OUT/log.txt" | tail -n 8
if [ -f "$BENCH_OUT/exit_code" ]; then
  echo "finished with exit code $(cat "$BENCH_OUT/exit_code")"; cat "$BENCH_OUT/result.json"
else
  echo "still running after ${WAIT}s; call again to keep waiting"
fi
if [ -n "${OUT:-}" ]; then
  cp "$BENCH_OUT"/benchmark.json "$BENCH_OUT"/log.txt "$BENCH_OUT"/result.json "$OUT"/ 2>/dev/null
  for r in "$BENCH_OUT"/e*/ "$BENCH_OUT"/*-e*/; do
    [ -d "$r" ] || continue
    n=$(basename "$r"); cp "$r/metrics.jsonl" "$OUT/$n-metrics.jsonl" 2>/dev/null; cp "$r/eval.md" "$OUT/$n-eval.md" 2>/dev/null
  done
fi
true
