# Set-up and the two everyday commands: `make run` (the study) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
# the optional dependencies from pyproject.toml that `make setup` installs, comma-separated
EXTRAS := test,export,cluster

.PHONY: setup data run test clean

setup: $(STAMP)

# torch goes in first, from the pin, so pip never resolves a CUDA build on a CPU machine.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

data: setup
	$(VENV)/bin/mnistlab data

run: data
	$(VENV)/bin/mnistlab compare

# The tests that need the real dataset skip when it cannot be prepared, so a failed
# download does not stop the rest of the suite.
# ruff checks the code's form first (pyproject.toml); the tests run in 4 processes (pytest-xdist), since
# many of them wait on the processes they start; the tests that share a Dask scheduler, the browser's tests
# (one Chromium) and the export's (each model exported once) each run in one process.
test: setup browser
	-$(VENV)/bin/mnistlab data
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -n 4 --dist loadgroup

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# Headless Chromium from Debian's packages (never a browser that a test tool downloads) and
# Playwright, for tests/test_browser.py, which skips without them.
.PHONY: browser
browser: setup
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
			|| echo "note: apt-get could not install chromium; tests/test_browser.py will skip"; \
	else \
		echo "note: installing chromium needs root and apt-get (apt-get install chromium); tests/test_browser.py will skip"; \
	fi
	$(PIP) install -c constraints.txt playwright || echo "note: playwright could not be installed; tests/test_browser.py will skip"
