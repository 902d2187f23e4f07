#!/usr/bin/env bash
# The recipe of pleura's shipped diagnosis model, `pocus-foundation-w16-128` (issues 14 and 16): the segmentation
# foundation fine-tuned for diagnosis on the real POCUS frames, segmentation kept by a segmentation step on
# randomised simulated frames at every step. Every step is an existing pleura command; nothing is downloaded.
#
#   scripts/pocus-model.sh --data ../shared/data/pocus            # the CPU recipe (see the model card for its time)
#
# 1. `pleura experiment pocus --inits foundation` measures the recipe: 5 folds by patient, held-out predictions,
#    the segmentation on the real cvat-lus clip when --cvat-lus is given. Its import and randomised frames are reused.
# 2. `pleura train-cls --folds 1` trains the same recipe once on every patient (a 20% patient split picks the epoch).
# 3. `pleura export model --calibration` bundles it: the temperature from step 1's pooled held-out predictions, the
#    OOD statistics from its training frames.
#
# Options: --data DIR (the POCUS folder; required), --out DIR (default runs/pocus), --model FILE (default
# OUT/pocus-foundation-w16-128.safetensors), --cvat-lus DIR, --seed N, --device cpu|cuda|auto.
# The Python comes from $PYTHON, else .venv/bin/python when present, else python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
data="" out=runs/pocus model="" cvat=() seed=0 device=cpu
die() { echo "pocus-model.sh: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) need "$@"; data=$2; shift 2 ;;
        --out) need "$@"; out=$2; shift 2 ;;
        --model) need "$@"; model=$2; shift 2 ;;
        --cvat-lus) need "$@"; cvat=(--cvat-lus "$2"); shift 2 ;;
        --seed) need "$@"; seed=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ -n "$data" ]] || die "--data is required (the POCUS folder, e.g. ../shared/data/pocus)"
[[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a whole number, got '$seed'"
model=${model:-$out/pocus-foundation-w16-128.safetensors}

start=$(date +%s)
"$PY" -m pleura experiment pocus --data "$data" --out "$out" --inits foundation --seed "$seed" --device "$device" \
    "${cvat[@]}"
measured=$(date +%s)
# the experiment's recipe (PocusExperimentConfig's defaults), once on all the data
"$PY" -m pleura train-cls --data "$out/data" --out "$out/all/foundation-seed$seed" --folds 1 --init sparse \
    --init-run foundation-sparse-w16-128 --seg-data "$out/segmentation/data/randomized" --seg-weight 0.5 \
    --epochs 7 --freeze-epochs 2 --lr 1e-3 --batch-size 16 --seed "$seed" --device "$device" --overwrite
trained=$(date +%s)
"$PY" -m pleura export model "$out/all/foundation-seed$seed" --out "$model" \
    --calibration "$out/classification/foundation-seed$seed"
end=$(date +%s)
echo "pocus-model: done in $((end - start)) s (5-fold measurement $((measured - start)) s, training on all the data" \
    "$((trained - measured)) s); model: $model"
