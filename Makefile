# The two commands a new user runs: `make demo` and `make test`.
# Both build .venv from nothing (pinned by constraints.txt) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH ?=

.PHONY: demo test test-fast bench venv lock clean

$(STAMP): pyproject.toml constraints.txt kserve-sdk.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,track]'
	rm -rf $(VENV)/kserve-sdk
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/kserve-sdk -r kserve-sdk.txt
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/kerakit build digits_cnn --target server,edge --out runs/demo

# The report test renders in a real headless browser: Debian's Chromium.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	@echo "Installing Debian's chromium for the report rendering test"
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The mcu target's firmware files are compiled in a test: Debian's g++.
GXX ?= /usr/bin/g++
$(GXX):
	@echo "Installing Debian's g++ for the firmware files' compile test"
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null

# Two pytest workers (pytest-xdist), one test file each at a time: most of the suite is
# one-core Python (imports, tracing, conversion), so the second core was idle.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP) $(CHROMIUM) $(GXX)
	KERAKIT_CHROMIUM=$(CHROMIUM) CXX=$(GXX) $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# While iterating: everything but the slow end-to-end cases.
test-fast: $(STAMP) $(CHROMIUM) $(GXX)
	KERAKIT_CHROMIUM=$(CHROMIUM) CXX=$(GXX) $(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

# `make bench BENCH=serve` runs one section (foundation, export, inference, serve, tune, data).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH)

# Re-pin constraints.txt to what is installed now (run after changing pyproject ranges).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean:
	rm -rf $(VENV) runs bench/results
