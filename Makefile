# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each sets up its own virtual environment first. TORCH_SPEC installs the CPU build that lies on
# this kind of machine; on a GPU machine use e.g. `make demo TORCH_SPEC=torch`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= train,export,serve,cpu,report,live,dev
# root installs Debian packages directly, anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= runs/demo

.PHONY: demo test test-slow venv servers clean proto

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nfc demo --out $(DEMO_DIR)

# Debian's clickhouse-server and redis-server for the live-pipeline tests, installed only when absent; the tests
# start and stop their own instances (own config, free loopback ports), never the system services
servers:
	@if [ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null; then \
		command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || MISSING=redis-server; \
	else MISSING="clickhouse-server redis-server"; fi; \
	if [ -n "$$MISSING" ]; then \
		echo "installing $$MISSING (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$MISSING; \
	fi

test: $(VENV)/.installed servers
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# the slow set (long trainings, live servers under load); CI runs the default set above
test-slow: $(VENV)/.installed servers
	$(PY) -m pytest -m slow

# regenerate the committed gRPC stubs in serving/proto after editing neuralfusion.proto
proto: $(VENV)/.installed
	$(PY) -c "from serving.proto import generate_stubs; generate_stubs()"

clean:
	rm -rf $(VENV) runs
