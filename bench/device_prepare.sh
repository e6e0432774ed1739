#!/usr/bin/env bash
# Builds, on this machine, what bench/device_run.sh needs on the GPU host (carry both in the call):
#   .whl      cp312 manylinux wheels of what the GPU image lacks (polars, open_clip and their needs)
#   .devdata  sources.npz (the embedding bench's source photos and digits) and png/, every k-th
#             openclipart-png file (apt-get install openclipart-png) up to ~6.3 MB
# Both are kept out of git through .git/info/exclude.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
pin() { grep -i "^$1==" deploy/constraints.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "$(pin polars)" "$(pin polars-runtime-32)" "$(pin open_clip_torch)" "$(pin ftfy)" "$(pin wcwidth)"
mkdir -p .devdata/png
.venv/bin/python -m bench.embeddings --prepare-sources .devdata/sources.npz
python3 - <<'PY'
import glob, os, shutil
root = "/usr/share/openclipart/png"
files = sorted(f for f in glob.glob(f"{root}/**/*.png", recursive=True) if os.path.getsize(f) < 2_000_000)
total = 0
for f in files[:: max(1, len(files) // 600)]:
    size = os.path.getsize(f)
    if total + size <= 6_300_000:
        shutil.copy(f, ".devdata/png/" + os.path.relpath(f, root).replace("/", "__"))
        total += size
print(f"{len(os.listdir('.devdata/png'))} PNGs, {total} bytes")
PY
du -sh .whl .devdata
