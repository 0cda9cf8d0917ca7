#!/usr/bin/env bash
# The GPU checks of one device session, as one script (the device tool lends ~15 minutes in all).
# Run from the repository root on a CUDA machine; results go to $OUT (default ./gpu_out).
# Expects: wheels for packages the machine lacks in .whl/ (optional) and real data re-encoded
# into .gpudata/ (optional: the experiments are skipped without it).
# CHECKS picks the checks (default all): e.g. CHECKS="cli" runs only 1b, CHECKS="bench cli" 1 and 1b.
set -u
CHECKS=${CHECKS:-"bench cli experiments pretrain"}
want() { case " $CHECKS " in *" $1 "*) return 0;; *) return 1;; esac; }
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

# 1. Pretraining throughput: sslmri's loop vs the notebook-style reference, ResNet-50 at 128 px.
if want bench; then
  timeout 170 python3 bench/pretrain_throughput.py --device cuda --batch 512 --steps 20 --repeats 3 \
    | tee "$OUT/bench_pretrain_gpu.log"
fi
# 1b. `cli.py pretrain` itself: ResNet-50, 128 px, batch 512, 300 steps on 8,192 generated images, --no-monitor
# (compile auto = on, the pool on the GPU, LARS). One JSON line: views/s (both views, per-step times from the
# uint8 pool to the optimiser step) after the first 30 steps, against the 20,000 views/s target.
if want cli; then
  timeout 300 python3 bench/pretrain_throughput.py --cli --model resnet50 --image-size 128 --batch 512 \
    --steps 300 --skip-steps 30 --target 20000 2> "$OUT/cli_pretrain.err" | tee "$OUT/cli_pretrain.json"
  tail -n 5 "$OUT/cli_pretrain.err"
fi

# 2. The CPU preset experiment grid on the real folders (re-encoded copies), on the GPU.
DB="sqlite:///$OUT/gpu_runs.db"
if want experiments && [ -d .gpudata/tumor/Training ]; then
  t0=$SECONDS; timeout 110 python3 cli.py experiment --preset cpu --task tumor \
    --data .gpudata/tumor/Training --db "$DB" --out /tmp/gpu_runs --no-progress --json > "$OUT/exp_tumor.log" 2>&1
  echo "tumor experiment wall_s $((SECONDS - t0))"; tail -n 1 "$OUT/exp_tumor.log"
fi
if want experiments && [ -d .gpudata/alzheimer_oasis ]; then
  t0=$SECONDS; timeout 95 python3 cli.py experiment --preset cpu --task alzheimer \
    --data .gpudata/alzheimer_oasis --db "$DB" --out /tmp/gpu_runs --no-progress --json > "$OUT/exp_oasis.log" 2>&1
  echo "oasis experiment wall_s $((SECONDS - t0))"; tail -n 1 "$OUT/exp_oasis.log"
fi
# 3. Real-data SimCLR on ResNet-50 with the per-epoch kNN curve.
if want pretrain && [ -d .gpudata/tumor/Training ]; then
  timeout 95 python3 cli.py pretrain --data .gpudata/tumor/Training --model resnet50 --image-size 96 \
    --batch-size 256 --epochs 12 --db "$DB" --out /tmp/gpu_runs --no-progress --json > "$OUT/pretrain_r50.log" 2>&1
  tail -n 1 "$OUT/pretrain_r50.log"
  python3 - "$OUT/gpu_runs.db" <<'PY' | tee "$OUT/knn_curve.txt"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
rid = con.execute("select max(id) from runs where kind='pretrain'").fetchone()[0]
for key in ("knn_acc", "probe_acc", "epoch_loss"):
    rows = con.execute("select epoch, value from metrics where run_id=? and key=? order by id", (rid, key)).fetchall()
    print(key, [(e, round(v, 4)) for e, v in rows if v is not None])
PY
fi
