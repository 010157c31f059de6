# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Two test processes, each module whole on one of them: the integration tests mostly wait on the
# worker, API and server processes they start (load about 1.2 on 2 cores run serially), so two
# at once took the suite from 14 min 5 s to 9 min 39 s here. PYTEST_WORKERS= runs it serially.
PYTEST_WORKERS ?= -n 2 --dist loadfile
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick clean

install: $(STAMP)

# torch is pinned: 2.13.0 is the CPU build available offline here; any other spec downloads gigabytes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,monitor]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/sluice demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench

bench-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench --quick

clean:
	rm -rf var .pytest_cache
