# dreamfleet — `make dream` and `make test` each work on a fresh clone (both run `setup` first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup setup-gpu gpu-check dream test test-fast bench bench-full lint clean
# CUDA build of torch for GPU machines: a CUDA 12 wheel, the CUDA major onnxruntime-gpu's PyPI wheels are built for
TORCH_GPU_INDEX ?= https://download.pytorch.org/whl/cu126

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,cluster,ray-data,video,charts,s3,ort]'
	touch $(STAMP)

# GPU machines: torch with CUDA, onnxruntime-gpu in place of onnxruntime, Ray. One command: make setup-gpu
setup-gpu:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 --index-url $(TORCH_GPU_INDEX)
	-$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,cluster,charts,ort-gpu]'
	$(PY) -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
	touch $(STAMP)

# On a CUDA machine: gpu tests, bench --full on CUDA for every backend, rows named by the device, table vs simulated
gpu-check: setup-gpu
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m dreamfleet.benchmarks.gpu_check

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
