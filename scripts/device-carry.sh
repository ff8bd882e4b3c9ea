#!/usr/bin/env bash
# Build .whl/: what a lent GPU machine (python 3.12, torch, transformers 5.17, no diffusers) needs to
# run this project, within the device tool's 64 MiB carry. See docs/gpu-bench.md, "The fourth lease".
# Usage: scripts/device-carry.sh   then, on the machine:  bash scripts/device-nano-check.sh  (carry .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
version() { .venv/bin/pip show "$1" 2>/dev/null | awk '/^Version/{print $2}'; }
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/py
pkgs=""
for p in diffusers peft regex pydantic pydantic_core pydantic-settings annotated-types typing-inspection fastapi \
         starlette uvicorn python-dotenv opentelemetry-api soundfile cffi pycparser soxr ftfy wcwidth transformers; do
    pkgs="$pkgs $p==$(version "$p")"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $pkgs
# transformers travels trimmed: model folders keep only their configs and tokenizers, except the models
# this project and diffusers import at module level.
keep=" llama clip clap speecht5 roberta bloom auto t5 gpt2 bert encoder_decoder dinov2_with_registers siglip vit_mae "
tmp=$(mktemp -d)
(cd "$tmp" && python3 -m zipfile -e "$OLDPWD"/.whl/transformers-*.whl . )
for d in "$tmp"/transformers/models/*/; do
    name=$(basename "$d")
    case "$keep" in *" $name "*) ;; *) find "$d" -type f ! -name "configuration_*.py" ! -name "__init__.py" ! -name "tokenization_*.py" -delete;; esac
done
rm .whl/transformers-*.whl
(cd "$tmp" && python3 -m zipfile -c "$OLDPWD"/.whl/transformers-trimmed.zip transformers transformers-*.dist-info)
rm -rf "$tmp"
# imagebind-unofficial (installed --no-deps from an sdist) and iopath, as plain folders
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp -r "$site/imagebind" "$site/iopath" .whl/py/
find .whl/py -name __pycache__ -prune -exec rm -rf {} +
du -sh .whl
