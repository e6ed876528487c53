# `make demo` and `make test` work on a fresh clone: both create .venv first (make setup).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.thomas-installed

.PHONY: setup adb test test-arm64 demo bench sz clean

setup: $(STAMP) adb

# Re-installs only when pyproject.toml changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,demo,fleet]'
	@touch $(STAMP)

# The virtual adb device of the tests drives a real `adb` server (Debian package `adb`). Installed
# once when missing; without apt-get the adb tests skip and say why.
adb:
	@command -v adb >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "adb is missing and apt-get is not here: install Android platform-tools for the adb tests"; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq adb >/dev/null; \
	  else \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq adb >/dev/null; \
	  fi; }

test: setup
	$(BIN)/python -m pytest -n auto --durations=20

# The agent on ARM64 (Debian arm64 Python + PoCL under qemu-user-static; root; docs/ANDROID.md "ARM64").
# The userland is built once into .arm64/ (git-ignored); ARM64_REBUILD=1 builds it again.
test-arm64: setup
	tests/arm64/run.sh

demo: setup
	$(BIN)/thomas demo

bench: setup
	set -e; for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f; done

# Line budget of the on-device agent (tinygrad's sz.py habit) and the layout rules test_layout_rules.py checks.
sz:
	@find device_agent -name '*.py' | xargs wc -l | sort -n | tail -15
	@$(PYTHON) tests/test_layout_rules.py

clean:
	rm -rf $(VENV) build dist *.egg-info
