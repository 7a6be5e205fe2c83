# Kemon: `make demo` runs the whole chain on simulated meters; `make test` runs every check.
# Both set up what is missing: a .venv with the project, and (as root, through apt-get) the
# system packages the tests and the demo use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kemon-installed
SYSTEM_PACKAGES := socat mosquitto mosquitto-clients postgresql systemd dosfstools mtools nftables udev iproute2
SYSTEM_COMMANDS := socat mosquitto mosquitto_sub timedatectl mkfs.vfat mcopy nft udevadm ip

.PHONY: test demo lint typecheck pytest bench system-deps venv clean

test: venv system-deps lint typecheck pytest

demo: venv system-deps
	$(VENV)/bin/kemon demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kemon needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	@if command -v dpkg-query >/dev/null 2>&1; then \
	  missing=""; for p in $(SYSTEM_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      echo "installing system packages:$$missing"; \
	      DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    else \
	      echo "missing system packages:$$missing -- install with: sudo apt-get install$$missing" >&2; exit 1; \
	    fi; \
	  fi; \
	else \
	  for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || \
	    { echo "missing $$c: install the packages $(SYSTEM_PACKAGES)" >&2; exit 1; }; done; \
	fi

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv system-deps
	$(VENV)/bin/pytest

bench: venv system-deps
	$(PY) bench/bench_store.py
	$(PY) bench/bench_polling.py
	$(PY) bench/bench_encoding.py
	$(PY) bench/bench_drain.py
	$(PY) bench/bench_fleet.py
	$(PY) bench/bench_ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-data
