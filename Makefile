# `make test` and `make demo` bootstrap .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# The main job: the paper's DnCNN extension grid (quick preset, builtin images, no data needed), then its plots.
# Re-running skips finished runs; an interrupted run resumes from its checkpoint.
demo: $(STAMP)
	$(BIN)/dynfilter sweep dncnn --preset quick --out results/quick
	$(BIN)/dynfilter plot results/quick

clean:
	rm -rf $(VENV) build *.egg-info
