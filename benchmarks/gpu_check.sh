#!/usr/bin/env bash
# The GPU checks of issue #11, as one script for a machine with CUDA (none is needed for the
# rest of difflab; this machine class has no GPU, so these figures are measured only where one
# is lent). Runs the CUDA tests, then times the digits U-Net's training steps on the GPU in
# fp32 and bf16, with and without torch.compile, beside the CPU, and 2 GPUs if present:
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
$PY -m pytest -q -p no:cacheprovider tests/test_backend.py -k cuda
$PY benchmarks/step_time.py --preset digits --steps 60 --configs \
    cpu:fp32 cuda:fp32 cuda:bf16 cuda:fp32:compile cuda:bf16:compile --out "$OUT/gpu_check"
# latent diffusion (issue 13): an autoencoder trained briefly on the GPU, then one latent
# training step timed beside the pixel-space mnist U-Net and the autoencoder's own step
AE_RUN=$(mktemp -d)/ae
$PY -m difflab train-autoencoder --steps 50 --device cuda --no-progress --out "$AE_RUN" >/dev/null
$PY benchmarks/step_time.py --preset mnist --steps 60 --configs cpu:fp32 cuda:fp32 cuda:bf16 \
    --out "$OUT/gpu_check_mnist"
$PY benchmarks/step_time.py --preset mnist-latent --autoencoder "$AE_RUN" --steps 60 \
    --configs cpu:fp32 cuda:fp32 cuda:bf16 cuda:bf16:compile --out "$OUT/gpu_check_latent"
$PY benchmarks/step_time.py --preset mnist-ae-kl-f4 --steps 60 \
    --configs cpu:fp32 cuda:fp32 cuda:bf16 --out "$OUT/gpu_check_autoencoder"
if [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    $PY benchmarks/step_time.py --preset digits --steps 60 --processes 2 \
        --configs cuda:fp32 cuda:bf16 --out "$OUT/gpu_check_2gpu"
fi
