#!/usr/bin/env bash
# On a lent GPU machine, with .whl carried (scripts/device-carry.sh): nano evaluated on CUDA in fp16,
# then the GPU-marked tests. Each step under its own timeout; logs under $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m zipfile -e .whl/transformers-trimmed.zip /tmp/site && export PYTHONPATH=/tmp/site:$PWD/.whl/py:$PWD || exit 1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
t0=$(date +%s)
timeout 90 python3 -m weights.nano.cli eval nano --device cuda --split held-out --repeats 4 --seed 0 \
  --json "$OUT/eval-cuda.json" > "$OUT/eval-cuda.log" 2>&1
tr '\r' '\n' < "$OUT/eval-cuda.log" | grep -v "^  \[" | tail -16; echo "eval: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout 90 python3 -m pytest -m gpu tests/nano/test_nano.py -p no:cacheprovider -rs -q > "$OUT/pytest-nano.log" 2>&1
tail -15 "$OUT/pytest-nano.log"; echo "pytest nano: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
timeout "${TINY_GPU_TIMEOUT:-300}" python3 -m pytest -m gpu tests/models -p no:cacheprovider -rs -q --durations=5 \
  > "$OUT/pytest-tiny.log" 2>&1
tail -15 "$OUT/pytest-tiny.log"; echo "pytest tiny: $(( $(date +%s) - t0 )) s"
