#!/usr/bin/env bash
# Re-measure the README's result tables on the shared real data (2 CPU cores: about 3 hours).
#
#   bash bench/readme_results.sh [DATA_ROOT] [OUT]     (defaults: ../shared/data, /tmp/sslmri-results)
#
# Each command's --json line goes to OUT/<name>.json, its log to OUT/<name>.log and its wall time
# and peak memory (GNU time) to OUT/<name>.time. Every command records into OUT/runs.db.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-/tmp/sslmri-results}
mkdir -p "$OUT"
PY=${PYTHON:-.venv/bin/python}
COMMON=(--db "sqlite:///$OUT/runs.db" --out "$OUT/runs" --no-progress --json)
ONLY=${ONLY:-}  # e.g. ONLY="tumor ms oasis" runs just those

run() {  # name, then the cli.py arguments
  local name=$1; shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "== $name: cli.py $*" >&2
  /usr/bin/time -v -o "$OUT/$name.time" "$PY" cli.py "$@" >"$OUT/$name.out" 2>"$OUT/$name.log"
  tail -n 1 "$OUT/$name.out" >"$OUT/$name.json"
  grep -E "Elapsed|Maximum resident" "$OUT/$name.time" >&2
}

# The settings of the first "cpu" preset (ResNet-18 at 64 px, 2 SimCLR epochs, 3 fine-tuning epochs, 2 seeds),
# spelled out: the README's tables measured with them stay reproducible after the preset became the recipe.
SMALL=(--model resnet18 --image-size 64 --batch-size 64 --pretrain-epochs 2 --epochs 3 --seeds 2)

run audit_tumor data audit "$DATA/tumor/Training" --db "sqlite:///$OUT/runs.db" --json
run leakage_oasis leakage --data "$DATA/alzheimer_oasis" "${COMMON[@]}"
run tumor experiment "${SMALL[@]}" --task tumor --data "$DATA/tumor/Training" "${COMMON[@]}"
# The two small cohorts: 5-fold cross-validation over subjects, one seed (each fold pretrains its own encoder).
run ms experiment "${SMALL[@]}" --task ms --data "$DATA/ms/FLAIR" --folds 5 --fractions 0.5,1.0 --seeds 1 "${COMMON[@]}"
run oasis experiment "${SMALL[@]}" --task alzheimer --data "$DATA/alzheimer_oasis" --folds 5 --fractions 0.1,1.0 \
  --seeds 1 "${COMMON[@]}"
# The cpu recipe (README "Recipes"): the plain defaults, the recipe at 12 epochs, the recipe; then each run's
# shifted test copy (bench/robustness.py --run ID, by hand: the run ids are in OUT/recipe*.json).
run recipe_defaults finetune --data "$DATA/tumor/Training" --task tumor --init scratch --model resnet18 \
  --image-size 128 --batch-size 64 --epochs 12 "${COMMON[@]}"
run recipe_short finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --epochs 12 "${COMMON[@]}"
run recipe finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu "${COMMON[@]}"
run ssl10 experiment --preset cpu --task tumor --data "$DATA/tumor/Training" --fractions 0.1 --arms ssl-full,scratch \
  --seeds 2 "${COMMON[@]}"
# OASIS: plain SimCLR negatives, the same-subject mask, the mask with a bias field (kNN on validation subjects).
for v in subject-negatives mask-same-subject; do
  run "oasis_$v" pretrain --data "$DATA/alzheimer_oasis" --model resnet18 --image-size 64 --batch-size 128 --epochs 8 \
    --exclude-val --monitor-share 1.0 "--$v" "${COMMON[@]}"
done
run oasis_bias pretrain --data "$DATA/alzheimer_oasis" --model resnet18 --image-size 64 --batch-size 128 --epochs 8 \
  --exclude-val --monitor-share 1.0 --augment bias_field=0.3 "${COMMON[@]}"
# The cpu recipe on the other tasks: SSL arms and scratch at 1/10/100% labels.
run parkinsons experiment --preset cpu --task parkinsons --data "$DATA/parkinsons" --fractions 0.01,0.1,1.0 \
  --arms ssl-linear,ssl-full,scratch --seeds 1 "${COMMON[@]}"
run ms_folds experiment --preset cpu --task ms --data "$DATA/ms/FLAIR" --folds 5 --fractions 0.1,1.0 \
  --arms ssl-full,scratch --seeds 1 "${COMMON[@]}"
run ms_recipe experiment --preset cpu --task ms --data "$DATA/ms/FLAIR" --fractions 0.01,0.1,1.0 \
  --arms ssl-linear,ssl-full,scratch --seeds 2 "${COMMON[@]}"
# SSL on every shared folder (--unlabeled) against the task alone, at the same 465 SimCLR steps; the task-only
# pretraining is the ssl10 experiment's. Fine-tuning from it: ONLY=unlabeled_ft PRETRAIN_RUN=<id> bash ...
run unlabeled pretrain --preset cpu --data "$DATA/tumor/Training" --unlabeled "$DATA/alzheimer_oasis" \
  --unlabeled "$DATA/parkinsons" --unlabeled "$DATA/ms" --max-steps 465 --exclude-val "${COMMON[@]}"
run unlabeled_ft experiment --preset cpu --task tumor --data "$DATA/tumor/Training" --fractions 0.01,0.1 \
  --arms ssl-full,scratch --seeds 2 --pretrain-run "${PRETRAIN_RUN:-1}" "${COMMON[@]}"
# What each recipe choice buys: the recipe with one choice undone.
run ablate_nopre finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --preprocess none \
  "${COMMON[@]}"
run ablate_crop finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --preprocess crop \
  "${COMMON[@]}"
run ablate_norm finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --preprocess norm \
  "${COMMON[@]}"
run ablate_nols finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --label-smoothing 0 \
  --no-tta "${COMMON[@]}"
run ablate_noaug finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu \
  --augment brightness=0.1,contrast=0.1,gamma=0.1,blur_p=0,noise_std=0,bias_field=0 "${COMMON[@]}"
# The same 30-minute budget spent on resolution instead of epochs, and on more epochs.
run size160 finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --image-size 160 \
  --epochs 20 "${COMMON[@]}"
run size144 finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --image-size 144 \
  --epochs 24 "${COMMON[@]}"
run epochs40 finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --epochs 40 "${COMMON[@]}"
run seed1 finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --seed 1 "${COMMON[@]}"
run wd05 finetune --data "$DATA/tumor/Training" --task tumor --init scratch --preset cpu --weight-decay 0.05 \
  "${COMMON[@]}"
