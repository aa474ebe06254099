# dreamfleet — `make dream` and `make test` each work on a fresh clone (both run `setup` first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup setup-gpu gpu-plan gpu-check dream test test-fast bench bench-full lint clean
# GPU stack (export/gpu_stack.py): CUDA=13 (default; NVIDIA driver r580+) or CUDA=12 (cu126 torch, onnxruntime-gpu
# 1.26.0, TensorRT 10 for CUDA 12; driver r535+). TRT=0 leaves TensorRT out. DRY_RUN=1 resolves without installing.
CUDA    ?= 13
TRT     ?= 1
DRY_RUN ?=
GPU_STACK_ARGS = --cuda $(CUDA) -c constraints.txt $(if $(filter 0,$(TRT)),--no-trt)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,cluster,ray-data,video,charts,s3,ort]'
	touch $(STAMP)

# GPU machines: the pinned stack (one CUDA major for torch, onnxruntime-gpu and TensorRT), then its check:
# versions and CUDA majors printed, a CUDA session that must really get CUDA. DRY_RUN=1 = make gpu-plan.
setup-gpu:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifneq ($(DRY_RUN),)
	$(PY) export/gpu_stack.py plan $(GPU_STACK_ARGS)
else
	$(PY) export/gpu_stack.py install $(GPU_STACK_ARGS)
	$(PY) -m dreamfleet.export.gpu_verify --cuda $(CUDA) $(if $(filter 0,$(TRT)),--no-trt)
	touch $(STAMP)
endif

# Resolve the GPU stack as a fresh machine would (pip install --dry-run --report), install nothing, check the CUDA majors
gpu-plan:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) export/gpu_stack.py plan $(GPU_STACK_ARGS)

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
