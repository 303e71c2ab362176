# SMTM-NG — `make run` starts the replay pipeline, `make test` runs the contracts, lint and the test suite.
# SMTM_INSTANCE=name make run|stop|status runs another instance beside the default one.
# Both install what they need: a venv with the pinned Python packages and, when run as
# root on Debian, the system libraries the monitor and its tests need (Mesa EGL, Xvfb).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Mesa/EGL for off-screen rendering; Xvfb and the xcb libraries for a PyQt6 window; chromium and its driver
# for the browser test of the backtest report.
DEBS   := libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri libfontconfig1 libfreetype6 \
          libglib2.0-0 libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0 xvfb xauth \
          libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 \
          libxcb-shape0 libxcb-xkb1 chromium chromium-driver
# What `make bench` needs besides: redis-server for the Redis Streams peer of the wake-latency benchmark
# (the benchmark starts and stops its own server; it skips that peer when redis-server is missing).
BENCH_DEBS := redis-server

.PHONY: run stop status test lint bench chaos debs bench-debs venv dev clean

$(BIN)/smtm: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev: $(BIN)/smtm requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(BIN)/smtm
dev: $(VENV)/.dev

# $(call install_debs,PACKAGES): the missing ones installed as root on Debian, else a warning naming them
define install_debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	  echo "warning: missing Debian packages (install as root): $$missing" >&2; \
	fi
endef

debs:
	$(call install_debs,$(DEBS))

bench-debs:
	$(call install_debs,$(BENCH_DEBS))

run: venv debs
	$(BIN)/smtm up --profile replay

stop: venv
	$(BIN)/smtm down

status: venv
	$(BIN)/smtm status

# Architecture contracts (import-linter, configured in setup.cfg) and lint (ruff, ruff.toml): a broken
# contract fails the run before the suite starts.
lint: dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: dev debs lint
	$(BIN)/python -m pytest -q tests

# The crash campaign with N trials (kill -9 of the trader at random moments and inside the order windows,
# with every order fault), against the replay exchange: prints its figures as JSON.
CHAOS_N ?= 100
chaos: dev
	SMTM_CHAOS_N=$(CHAOS_N) $(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout 3600 tests/e2e/test_crash_campaign.py

bench: dev debs bench-debs
	$(BIN)/python -m pytest -q bench --bench-report bench/report --benchmark-columns=min,median,mean,max,rounds --benchmark-sort=name

clean:
	-$(BIN)/smtm down
	rm -rf $(VENV) run .pytest_cache .benchmarks
