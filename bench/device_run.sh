#!/usr/bin/env bash
# The GPU-machine measurements in one call (`device` tool, nvidia-h200 / h100 kinds): the embedding
# stage against its real ceilings (JPEG via nvJPEG, PNG graphics via decode processes) and stage 1's
# parallel efficiency at 1..16 workers. Needs, carried with the call (bench/device_prepare.sh builds both): .whl (polars, polars-runtime-32,
# open_clip_torch, ftfy, wcwidth wheels for cp312 manylinux) and .devdata (sources.npz from
# `python -m bench.embeddings --prepare-sources .devdata/sources.npz`, and png/: a sample of
# openclipart-png; ~6 MB fit beside the wheels under the 64 MiB transfer limit). Results land in $OUT
# (copy them to bench/results/). About 6 minutes on the H200 host: run with timeout_s >= 480.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
(lscpu 2>/dev/null || grep -E "model name|siblings|cpu cores|core id|physical id" /proc/cpuinfo | sort | uniq -c) > "$OUT/cpu.txt" 2>&1  # SMT?
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python3 -c "import torch, torchvision, polars, open_clip, numba, numpy, PIL, scipy; print('torch', torch.__version__, 'tv', torchvision.__version__, 'polars', polars.__version__, 'open_clip', open_clip.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__, 'PIL', PIL.__version__, 'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())" 2>&1 | tee "$OUT/versions.txt"
label=$(python3 -c "from bench.embeddings import device_label; print(device_label('cuda'))" 2>/dev/null || echo nvidia-gpu)
echo "== embeddings ($label)"; date -u
timeout "${EMB_TIMEOUT:-300}" python3 -m bench.embeddings --device cuda --sources .devdata/sources.npz \
  --png-dir .devdata/png --n-png 400 --png-repeat 8 --out "$OUT/embeddings-$label.json" > "$OUT/embeddings.log" 2>&1
echo "embeddings rc=$?"; tail -n 25 "$OUT/embeddings.log"
echo "== stage 1 scaling"; date -u
timeout "${S1_TIMEOUT:-300}" python3 -m bench.stage1_scaling --workers 1,2,4,8,16 --rows-per-worker 1500 \
  --n-files 1000 --rounds 2 --out "$OUT/stage1_scaling-gpu-host.json" > "$OUT/stage1_scaling.log" 2>&1
echo "stage1 rc=$?"; tail -n 40 "$OUT/stage1_scaling.log"
echo "== GPU tests (nvJPEG path vs CPU path; the EfficientNet one needs its wheel, not carried)"
timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider tests/unit/test_embedding.py -m gpu \
  -k matches_cpu_path > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -n 5 "$OUT/gpu_tests.log"
date -u
