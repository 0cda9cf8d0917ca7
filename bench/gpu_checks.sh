#!/usr/bin/env bash
# The GPU checks of one device session, as one script (the device tool lends ~15 minutes in all).
# Run from the repository root on a CUDA machine; results go to $OUT (default ./gpu_out).
# Expects: wheels for packages the machine lacks in .whl/ (optional) and real folders copied into
# .gpudata/ (optional: each check that needs one is skipped without it; the device's transfer limit,
# 64 MiB, holds one real folder per call).
# CHECKS picks the checks (default "cli tumor"): e.g. CHECKS="oasis" runs only the OASIS folds.
#   bench  sslmri's step vs the notebook-style reference (bench/pretrain_throughput.py)
#   cli    `cli.py pretrain` itself, compiled and eager: views/s against the 20,000 target
#   tumor  the GPU recipe on .gpudata/tumor/Training: SSL vs scratch at 1/10/100% labels
#   oasis  the CPU recipe on .gpudata/alzheimer_oasis, 5 subject folds (run on the GPU for time)
#   pretrain  real-data SimCLR on ResNet-50 with the per-epoch kNN curve
# Each check has its own time limit (seconds) in <NAME>_S, so a call ends inside the device's limit.
set -u
CHECKS=${CHECKS:-"cli tumor"}
want() { case " $CHECKS " in *" $1 "*) return 0;; *) return 1;; esac; }
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
DB="sqlite:///$OUT/gpu_runs.db"

# Every run of the store: kind, arm, fraction, seed, fold, status, wall time and test metrics.
runs_table() {
  python3 - "$OUT/gpu_runs.db" <<'PY' | tee -a "$OUT/runs_table.txt"
import sqlite3, sys
from datetime import datetime
con = sqlite3.connect(sys.argv[1])
def p(rid, key):
    row = con.execute("select value from params where run_id=? and key=?", (rid, key)).fetchone()
    return row[0] if row else None
def m(rid, key):
    row = con.execute("select value from metrics where run_id=? and key=? order by id desc", (rid, key)).fetchone()
    return round(row[0], 4) if row and row[0] is not None else None
for rid, kind, status, task, started, ended in con.execute(
        "select id, kind, status, task, started_at, ended_at from runs order by id").fetchall():
    wall = round((datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds(), 1) \
        if started and ended else None
    print(rid, kind, task, status, f"wall_s={wall}", f"arm={p(rid, 'arm')}", f"fraction={p(rid, 'fraction')}",
          f"seed={p(rid, 'seed')}", f"fold={p(rid, 'fold')}", f"steps={p(rid, 'optimizer_steps')}",
          f"test_acc={m(rid, 'test_accuracy')}", f"test_bal={m(rid, 'test_balanced_accuracy')}",
          f"val_bal={m(rid, 'val_balanced_accuracy')}", f"knn={m(rid, 'knn_acc')}")
PY
}

# 1. Pretraining throughput: sslmri's loop vs the notebook-style reference, ResNet-50 at 128 px.
if want bench; then
  timeout "${BENCH_S:-170}" python3 bench/pretrain_throughput.py --device cuda --batch 512 --steps 20 --repeats 3 \
    | tee "$OUT/bench_pretrain_gpu.log"
fi
# 1b. `cli.py pretrain` itself: ResNet-50, 128 px, batch 512, --no-monitor, the uint8 pool on the GPU, LARS;
# compiled (--compile on) then eager (off). One JSON line each: views/s (both views, per-step times from the
# uint8 pool to the optimiser step) after the first 30 steps, against the 20,000 views/s target.
if want cli; then
  data=(); [ -d .gpudata/tumor/Training ] && data=(--data .gpudata/tumor/Training)
  for mode in on off; do
    timeout "${CLI_S:-150}" python3 bench/pretrain_throughput.py --cli --cli-compile "$mode" --model resnet50 \
      --image-size 128 --batch 512 --steps 300 --skip-steps 30 --target 20000 "${data[@]}" \
      2> "$OUT/cli_pretrain_$mode.err" | tee "$OUT/cli_pretrain_$mode.json"
    tail -n 3 "$OUT/cli_pretrain_$mode.err"
  done
fi

# 2. The GPU recipe (`--preset gpu`: ResNet-50, 128 px, crop+norm) on the real tumour folder, SSL vs scratch.
# Compilation is off here (TORCHDYNAMO_DISABLE): it costs about a minute per process and the runs are short.
if want tumor && [ -d .gpudata/tumor/Training ]; then
  t0=$SECONDS; TORCHDYNAMO_DISABLE=1 timeout "${TUMOR_S:-300}" python3 cli.py experiment --preset gpu --task tumor \
    --data .gpudata/tumor/Training --fractions "${TUMOR_FRACTIONS:-1.0,0.1,0.01}" --arms ssl-full,scratch \
    --seeds "${TUMOR_SEEDS:-2}" --db "$DB" --out /tmp/gpu_runs --no-progress --json > "$OUT/exp_tumor.log" 2>&1
  echo "tumor experiment wall_s $((SECONDS - t0))"; tail -c 1500 "$OUT/exp_tumor.log"; echo
fi
# 3. The CPU recipe (`--preset cpu`) on OASIS, 5 subject folds, SSL pretrained per fold; on the GPU for time.
if want oasis && [ -d .gpudata/alzheimer_oasis ]; then
  t0=$SECONDS; TORCHDYNAMO_DISABLE=1 timeout "${OASIS_S:-300}" python3 cli.py experiment --preset cpu \
    --task alzheimer --data .gpudata/alzheimer_oasis --folds 5 --fractions 1.0 --arms ssl-full,scratch \
    --seeds "${OASIS_SEEDS:-1}" --db "$DB" --out /tmp/gpu_runs --no-progress --json > "$OUT/exp_oasis.log" 2>&1
  echo "oasis experiment wall_s $((SECONDS - t0))"; tail -c 1500 "$OUT/exp_oasis.log"; echo
fi
# 4. Real-data SimCLR on ResNet-50 with the per-epoch kNN curve.
if want pretrain && [ -d .gpudata/tumor/Training ]; then
  timeout "${PRETRAIN_S:-95}" python3 cli.py pretrain --data .gpudata/tumor/Training --model resnet50 \
    --image-size 96 --batch-size 256 --epochs 12 --db "$DB" --out /tmp/gpu_runs --no-progress --json \
    > "$OUT/pretrain_r50.log" 2>&1
  tail -n 1 "$OUT/pretrain_r50.log"
fi
[ -f "$OUT/gpu_runs.db" ] && runs_table
exit 0
