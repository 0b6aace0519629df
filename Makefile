# Shortcuts for the README's commands; each works without make too.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint bench bench-quick bench-ops gpu-bundle bench-gpu

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/voxserve serve

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m benchmarks.transcription_load

bench-quick: $(VENV)/.installed
	$(PY) -m benchmarks.transcription_load --quick

bench-ops: $(VENV)/.installed
	$(PY) -m benchmarks.overload && $(PY) -m benchmarks.soak

# The GPU benchmark: write its bundle here (a full install), then on the GPU box, which
# needs only torch, transformers, tokenizers, safetensors and numpy:
#   python3 -m benchmarks.gpu_whisper --bundle .gpu --out gpu_whisper.json
gpu-bundle: $(VENV)/.installed
	$(PY) -m benchmarks.gpu_prepare --out .gpu

bench-gpu: .gpu/expected.json
	python3 -m benchmarks.gpu_whisper --bundle .gpu --out gpu_whisper.json

.gpu/expected.json:
	$(MAKE) gpu-bundle
