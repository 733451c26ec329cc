#!/usr/bin/env bash
# Fused training on a lent GPU machine, in one go (issue 21 item 6; under 8 minutes on an H200):
# TensorFlow with CUDA from the package registry (too large to carry), then K = 1, 8, 32, 64 slots of
# the default LeNet on the real training images, a few hundred steps each (grouped slot convolutions:
# lenet_sweep.model.slot_layers.default_formulation on a GPU), next to one trial's fast path. Prints
# trial-samples/s, each arm's GPU peak memory and the K = 64 / K = 1 ratio.
#
# From a session lent a device (the data travels in an ignored folder named in carry):
#   mkdir -p .gpu_data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/
#   grep -qx '/.gpu_data/' .git/info/exclude || echo /.gpu_data/ >> .git/info/exclude
#   run(command="bash benchmarks/gpu_pack.sh", carry=[".gpu_data"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export PACK_DATA_DIR="${PACK_DATA_DIR:-$PWD/.gpu_data}"
VENV="${GPU_VENV:-/tmp/gpu_pack_venv}"
start=$(date +%s)
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "tensorflow[and-cuda]>=2.16,<3" "keras>=3,<4" "hydra-core>=1.3.2,<1.4" numpy
"$VENV/bin/pip" install -q --no-deps -e .
echo "installed in $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$VENV/bin/python" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, tf.config.list_physical_devices('GPU'))"
# 300 steps of batch 32 per epoch; the second epoch is timed (the first traces)
timeout 420 "$VENV/bin/python" benchmarks/pack_throughput.py --packs 1 8 32 64 --images 9600 --batch 32 \
    --repeats 1 --activations sigmoid --batches independent shared
echo "done in $(( $(date +%s) - start )) s"
