# Shortcuts for the README's commands; each works without make too.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: serve test lint bench bench-quick bench-ops

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
