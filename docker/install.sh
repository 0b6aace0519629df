#!/usr/bin/env bash
# Install voxserve with its `gpu` extra into a fresh virtual environment.
#
#   docker/install.sh VENV_DIR SRC_DIR        (PYTHON: the interpreter, default python3)
#
# Dockerfile.cuda runs this; tests/deploy/test_dockerfile.py runs it too, in a clean
# venv, so the image's install steps are checked without a Docker engine.
#
# The TTS and Whisper dependencies (hibari-tts, piper-tts, faster-whisper) require the
# CPU `onnxruntime`, and `onnxruntime-gpu` ships the same `onnxruntime` module: with both
# installed, whichever pip unpacked last owns the shared files. So install everything,
# remove the CPU build, then reinstall the GPU build over the top so its files are whole.
# (`pip check` afterwards reports `onnxruntime` as missing: expected, the module is there.)
# constraints-cuda12.txt, next to this script, keeps the GPU build and torch (PyPI's CUDA
# 12.8 wheels, which bring their own CUDA libraries as nvidia-*-cu12 wheels) on CUDA 12.
# CONSTRAINTS names another constraints file: the tests put the CPU torch they run on in
# place of the CUDA one (gigabytes), and a build for another CUDA would name its own.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 VENV_DIR SRC_DIR" >&2
    exit 2
fi
venv_dir=$1
src_dir=$2
python=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
constraints=${CONSTRAINTS:-$here/constraints-cuda12.txt}

"$python" -m venv "$venv_dir"
pip=("$venv_dir/bin/python" -m pip --no-input --disable-pip-version-check)

"${pip[@]}" install --no-cache-dir --constraint "$constraints" "${src_dir}[gpu]"

ort_gpu_version=$("$venv_dir/bin/python" -c \
    'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')
"${pip[@]}" uninstall -y onnxruntime
"${pip[@]}" install --no-cache-dir --force-reinstall --no-deps \
    "onnxruntime-gpu==${ort_gpu_version}"

# Compiled-in providers are listed with or without a GPU, so this holds on a CPU host.
"$venv_dir/bin/python" -c '
import onnxruntime as o
providers = o.get_available_providers()
assert "CUDAExecutionProvider" in providers, providers
print("onnxruntime-gpu", o.__version__, providers)
'
