#!/usr/bin/env bash
# Build pleura's wheel, install it into a fresh virtual environment outside the checkout, and run it there:
# --version, simulate, and predict on a simulated clip with the default model (package data, not a path into
# the source tree). The fresh environment reuses the dependencies already installed in .venv (a .pth file),
# so this checks pleura's own packaging without downloading torch again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
work=$(mktemp -d "${TMPDIR:-/tmp}/pleura-wheel-XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PY" -c 'import setuptools' 2>/dev/null || "$PY" -m pip install --quiet --disable-pip-version-check "setuptools>=64"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --disable-pip-version-check -w "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/pleura-*.whl)
"$PY" - "$wheel" <<'PY' || { echo "wheel-check: the shipped models are not in $wheel" >&2; exit 1; }
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
sys.exit(0 if {"pleura/models/pretrained/pocus-foundation-w16-128.safetensors",
               "pleura/models/pretrained/pocus-foundation-w16-128.json"} <= names else 1)
PY
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-deps --disable-pip-version-check "$wheel"
deps=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/zz-pleura-deps.pth"  # dependencies only: .pth files inside it (pleura's editable hook) do not run

cd "$work"
where=$("$work/venv/bin/python" -c 'import pleura, pathlib; print(pathlib.Path(pleura.__file__).parent)')
case "$where" in "$site"*) ;; *) echo "wheel-check: pleura imported from $where, not the wheel" >&2; exit 1;; esac
"$work/venv/bin/pleura" --version
"$work/venv/bin/pleura" simulate --out sim --n 1 --frames 6 --size 128 --workers 1 >/dev/null
"$work/venv/bin/python" - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
from pleura.data.synthetic import write_clip
write_clip("clip.mp4", [np.asarray(Image.open(p).convert("L")) for p in sorted(Path("sim/images").glob("*.png"))])
PY
"$work/venv/bin/pleura" predict clip.mp4 --out pred
test -s pred/predictions.json && test -s pred/clip.mp4
"$work/venv/bin/pleura" serve --help >/dev/null && "$work/venv/bin/python" -c 'from importlib.resources import files; assert all((files("pleura.serve") / "static" / n).is_file() for n in ("index.html", "app.js", "app.css")), "pleura serve: the page is not in the wheel"'
echo "wheel-check: $(basename "$wheel") installed outside the checkout: --version, simulate and predict (default model) ran"
