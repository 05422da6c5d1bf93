# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each sets up its own virtual environment first. TORCH_SPEC installs the CPU build that lies on
# this kind of machine; on a GPU machine use e.g. `make demo TORCH_SPEC=torch`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,export,serve,cpu,dev
DEMO_DIR ?= runs/demo

.PHONY: demo test test-slow venv clean proto

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nfc demo --out $(DEMO_DIR)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# the slow set (long trainings, live servers under load); CI runs the default set above
test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

# regenerate the committed gRPC stubs in serving/proto after editing neuralfusion.proto
proto: $(VENV)/.installed
	$(PY) -c "from serving.proto import generate_stubs; generate_stubs()"

clean:
	rm -rf $(VENV) runs
