#!/usr/bin/env bash
# Create the venvs in which tests/test_inference_toolkits.py drives the real SageMaker serving toolkits:
#   .venv-hf      sagemaker-huggingface-inference-toolkit 2.6.0 + transformers 4.49.0 (the HF DLC 4.49 image)
#   .venv-pytorch sagemaker-pytorch-inference 2.0.25 + TorchServe 0.12.0 (the PyTorch 2.6 inference image), with
#                 a current transformers, as pip installs from code/requirements.txt on that image
# torch is pinned to the local CPU wheel (constraints-cpu.txt). Tests skip with a reason when a venv is absent.
# Usage: bash scripts/setup-toolkit-venvs.sh [hf|pytorch ...]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("${@:-hf pytorch}")
for target in ${targets[*]}; do
  venv=".venv-$target"
  rm -rf "$venv"
  python3 -m venv "$venv"
  case "$target" in
    hf) packages=("sagemaker-huggingface-inference-toolkit==2.6.0" "transformers==4.49.0" "multi-model-server==1.1.11") ;;
    pytorch) packages=("sagemaker-pytorch-inference==2.0.25" "torchserve==0.12.0" "transformers==5.24.0") ;;
    *) echo "unknown toolkit venv: $target (hf, pytorch)" >&2; exit 2 ;;
  esac
  "$venv/bin/pip" install -q -c constraints-cpu.txt "torch==2.13.0" "${packages[@]}" \
    "tokenizers" "safetensors" "numpy" "pytest"
done
