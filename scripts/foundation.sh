#!/usr/bin/env bash
# The pretraining recipe of pleura's segmentation foundation (issue 14, item 2): a U-Net trained on a large,
# domain-randomised simulated set (`pleura simulate --randomize`), both probes, with the pleural line and the
# A-lines labelled as bands of the experts' thickness (8 and 10.5 px at 128 px, scaled with --size).
# Every step is an existing pleura command; nothing is downloaded.
#
#   scripts/foundation.sh                 # CPU preset: 5,000 clips x 4 frames = 20,000 frames at 128 px, sparse,
#                                         #   width 16, 2 epochs (see docs/simulator.md for the time it takes)
#   scripts/foundation.sh --full          # GPU preset: 10,000 clips x 4 = 40,000 frames at 256 px, width 32,
#                                         #   20 epochs, --device auto
#   scripts/foundation.sh --clips 4 --frames 2 --epochs 1 --out /tmp/f   # a smoke run (tests do this)
#
# Options (after the preset, so they override it): --out DIR (default runs/foundation), --clips N, --frames N,
# --size PX, --epochs N, --width N, --schema sparse|dense, --seed N, --device cpu|cuda|auto, --workers N
# (simulation processes; 0 = all cores), --patience N, --overwrite (replace OUT; without it an existing
# OUT/data is reused and an existing OUT/run is an error).
# Writes OUT/data (the simulated set) and OUT/run (train-seg's run folder); the foundation's weights are
# OUT/run/best/model.safetensors (best on the simulated validation clips: no real frame chooses anything).
# The Python comes from $PYTHON, else .venv/bin/python when present, else python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi

out=runs/foundation clips=5000 frames=4 size=128 epochs=2 width=16 schema=sparse seed=0 device=cpu workers=0
patience=100 overwrite=0
die() { echo "foundation.sh: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --full) clips=10000 frames=4 size=256 epochs=20 width=32 device=auto; shift ;;
        --out) need "$@"; out=$2; shift 2 ;;
        --clips) need "$@"; clips=$2; shift 2 ;;
        --frames) need "$@"; frames=$2; shift 2 ;;
        --size) need "$@"; size=$2; shift 2 ;;
        --epochs) need "$@"; epochs=$2; shift 2 ;;
        --width) need "$@"; width=$2; shift 2 ;;
        --schema) need "$@"; schema=$2; shift 2 ;;
        --seed) need "$@"; seed=$2; shift 2 ;;
        --device) need "$@"; device=$2; shift 2 ;;
        --workers) need "$@"; workers=$2; shift 2 ;;
        --patience) need "$@"; patience=$2; shift 2 ;;
        --overwrite) overwrite=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in clips frames size epochs width seed workers patience; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$v must be a whole number, got '${!v}'"
done
[[ "$schema" == sparse || "$schema" == dense ]] || die "--schema must be sparse or dense, got '$schema'"

# The experts' band thickness on the cvat-lus clip, in pixels of a 128-px frame, scaled to --size.
line_px=$(awk -v s="$size" 'BEGIN { printf "%.2f", 8 * s / 128 }')
a_line_px=$(awk -v s="$size" 'BEGIN { printf "%.2f", 10.5 * s / 128 }')
over=()
[[ $overwrite == 1 ]] && over=(--overwrite)

start=$(date +%s)
if [[ $overwrite == 1 || ! -f "$out/data/manifest.csv" ]]; then
    echo "foundation: simulating $clips clips x $frames frames at $size px (randomised, both probes) into $out/data"
    "$PY" -m pleura simulate --out "$out/data" --n "$clips" --frames "$frames" --size "$size" --probe mixed \
        --seed "$((1000 + seed))" --randomize --line-label-px "$line_px" --a-line-label-px "$a_line_px" \
        --workers "$workers" "${over[@]}"
else
    echo "foundation: reusing the simulated set in $out/data (pass --overwrite to simulate it again)"
fi
sim_end=$(date +%s)
echo "foundation: training a $schema U-Net (width $width, $epochs epochs, seed $seed, $device) into $out/run"
"$PY" -m pleura train-seg --data "$out/data" --out "$out/run" --schema "$schema" --width "$width" \
    --epochs "$epochs" --patience "$patience" --seed "$seed" --device "$device" "${over[@]}"
end=$(date +%s)
echo "foundation: done in $((end - start)) s (simulation $((sim_end - start)) s, training $((end - sim_end)) s);" \
    "weights: $out/run/best/model.safetensors"
