# slimformer developer entry points. `make demo` and `make test` set up .venv from scratch (CPU torch pinned below,
# then the package built against it with --no-build-isolation, so no CUDA torch is ever pulled onto a CPU box).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
CUDA_ARCHS ?= 80 90
NVCC ?= nvcc
CU_SOURCES := $(shell find csrc -name '*.cu')
PYTEST_ARGS ?=

.PHONY: all install test demo bench bench-kernel cuda-check clean

all: install

$(VENV)/.deps-stamp: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q "scikit-build-core>=0.10" numpy tqdm safetensors pytest "transformers>=4.56" scikit-learn
	# The published GPTQ reference the tests compare against; --no-deps: only its pure-PyTorch files are used.
	$(PY) -m pip install -q --no-deps "auto-gptq==0.7.1"
	# The 2:4 checkpoint peer (its last release with the sparse-24-bitmask compressor); --no-deps keeps its
	# transformers<5 pin from replacing ours; the tests run it in both directions.
	$(PY) -m pip install -q pydantic loguru psutil
	$(PY) -m pip install -q --no-deps "compressed-tensors==0.14.0.1"
	touch $@

install: $(VENV)/.deps-stamp
	$(PY) -m pip install -q --no-build-isolation --no-deps .

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) -m slimformer.demo

$(VENV)/.bench-stamp: $(VENV)/.deps-stamp
	$(PY) -m pip install -q onnx onnxruntime matplotlib
	touch $@

bench: install $(VENV)/.bench-stamp
	$(PY) benchmarks/bench_gptq.py

# Compiles every CUDA source for each architecture with plain nvcc (no torch needed): the CUDA evidence on
# machines without a GPU.
cuda-check:
	@test -n "$(CU_SOURCES)" || { echo "no .cu sources found"; exit 1; }
	@for arch in $(CUDA_ARCHS); do for f in $(CU_SOURCES); do \
	  echo "nvcc sm_$$arch $$f"; \
	  $(NVCC) -std=c++17 -O2 -Icsrc -arch=sm_$$arch -c $$f -o /dev/null || exit 1; \
	done; done
	@echo "cuda-check: all $(words $(CU_SOURCES)) CUDA sources compiled for sm_$(subst $() $(),/sm_,$(CUDA_ARCHS))"
	@# The torch glue of the CUDA ops (*_cuda_ops.cpp) needs a CUDA torch to build; with the CPU torch's headers
	@# (c10/cuda is shipped, its CMake-generated macro header is not) it can at least be syntax-checked.
	@if test -x $(PY); then \
	  TI=$$($(PY) -c "import torch.utils.cpp_extension as c; print(c.include_paths()[0])") && \
	  mkdir -p build/cuda-check/c10/cuda/impl && echo '#pragma once' > build/cuda-check/c10/cuda/impl/cuda_cmake_macros.h && \
	  CUDA_INC=$$(echo | $(NVCC) -x cu -E - -v 2>&1 | sed -n 's/.*-I"\{0,1\}\([^" ]*targets[^" ]*include\).*/\1/p' | head -1) && \
	  for f in $$(find csrc -name '*_cuda_ops.cpp'); do echo "syntax $$f"; \
	    $(CXX) -std=c++20 -fsyntax-only -Icsrc -I$$TI -I$$TI/torch/csrc/api/include -Ibuild/cuda-check \
	      -I$$CUDA_INC $$f || exit 1; done; \
	  echo "cuda-check: the CUDA op glue passes a syntax check against torch's headers"; \
	else echo "cuda-check: no $(PY): the CUDA op glue was not syntax-checked"; fi

clean:
	rm -rf build dist *.egg-info
