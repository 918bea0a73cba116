# Set-up and main jobs. `make demo` and `make test` work on a fresh machine (pip, not uv/poetry:
# they ignore the local torch wheels and download several GB).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DEMO_OUT ?= runs/demo

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
export MPLBACKEND := Agg

.PHONY: install demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/anoaug demo --out $(DEMO_OUT)

test: install
	$(VENV)/bin/ruff check anoaug flows tests benchmarks
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check anoaug flows tests benchmarks

bench: install
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf runs .prefect .pytest_cache
