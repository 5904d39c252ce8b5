# Set-up and the two everyday commands: `make run` (the study) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: setup data run test clean

setup: $(STAMP)

# torch goes in first, from the pin, so pip never resolves a CUDA build on a CPU machine.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $(STAMP)

data: setup
	$(VENV)/bin/mnistlab data

run: data
	$(VENV)/bin/mnistlab compare

# The tests that need the real dataset skip when it cannot be prepared, so a failed
# download does not stop the rest of the suite.
test: setup
	-$(VENV)/bin/mnistlab data
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
