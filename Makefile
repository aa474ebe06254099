# dreamfleet — `make dream` and `make test` each work on a fresh clone (both run `setup` first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup dream test test-fast bench bench-full lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev,cluster,charts]'
	touch $(STAMP)

# The main job on the embedded default: the sample photos, Google's classic dream, BVLC GoogLeNet.
dream: setup
	$(VENV)/bin/dreamfleet dream data/samples -o dreams --preset classic

test: setup
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q -ra --durations=15

test-fast: setup
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q -x -m "not slow"

bench: setup
	$(VENV)/bin/dreamfleet bench
	$(PY) -m dreamfleet.benchmarks.large_image --quick   # tiled vs untiled, peak RSS per process

bench-full: setup
	$(VENV)/bin/dreamfleet bench --full

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf dreams build *.egg-info .pytest_cache
