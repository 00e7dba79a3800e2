# The two commands a new user runs: `make demo` and `make test`.
# Both build .venv from nothing (pinned by constraints.txt) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH ?=

.PHONY: demo test test-fast bench venv lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kerakit train digits_cnn --out runs/demo
	$(BIN)/kerakit evaluate runs/demo
	$(BIN)/kerakit export runs/demo --target server,edge
	$(BIN)/kerakit bench runs/demo --batch 1,32 --runs 100

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# While iterating: everything but the slow end-to-end cases.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# `make bench BENCH=serve` runs one section (foundation, export, serve, tune).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH)

# Re-pin constraints.txt to what is installed now (run after changing pyproject ranges).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) runs bench/results
