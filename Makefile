# The two commands that matter: `make demo` and `make test`. Both create the
# virtual environment on first use; every install goes through constraints.txt
# so that torch stays the pinned CPU build. The demo installs only the package;
# the tests add pytest, peft and verl's imports (about 1.5 GB more).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# GPU=cu128 (or cu126, cu129, ...: a CUDA build on PyTorch's wheel index) installs the CUDA build of the same
# pinned torch (2.13.0, still through constraints.txt), e.g. `make setup GPU=cu128`; on an existing CPU
# environment it replaces torch in place. Empty: the CPU wheel.
GPU ?=
TORCH_SOURCE := $(if $(GPU),--index-url https://download.pytorch.org/whl/$(GPU),)

.PHONY: setup setup-test demo test test-slow clean

setup: $(STAMP)
ifneq ($(GPU),)
	$(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" || $(PIP) --force-reinstall $(TORCH_SOURCE) torch==2.13.0
	$(PY) -c "import torch; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'CUDA', torch.version.cuda, '-', torch.cuda.get_device_name(0) if ok else 'no GPU visible (driver?)')"
endif

setup-test: $(TEST_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_SOURCE) torch==2.13.0
	$(PIP) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test,lora,verl]'
	# verl declares transformers<5.11; its imports work with our pins, so it goes in without deps
	$(PIP) --no-deps verl==0.9.1
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/mapo demo

test: $(TEST_STAMP)
	$(VENV)/bin/pytest -m "not slow" --timeout=600 -q

# Slow tests: real-shape Qwen2.5-VL-7B / Qwen3-VL-8B checks (about 1.5 min each, ~11 GB RAM), long sweeps.
test-slow: $(TEST_STAMP)
	$(VENV)/bin/pytest -m slow --timeout=1800 -q

clean:
	rm -rf runs .pytest_cache
