# The two set-up-and-go commands: `make demo` (the main job on the demo corpus) and `make test`.
PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast test-extended test-transformers-floor demo clean-demo gpu-check ablate ablate-smoke

$(VENV_STAMP): setup.py constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -c constraints.txt torch==2.13.0
	.venv/bin/pip install -q -c constraints.txt -e '.[dev]'
	@# DeepSpeed JIT-builds its CPU collective op on first use (1-3 min), in .venv/torch_extensions unless
	@# TORCH_EXTENSIONS_DIR is set (docs/outputs.md): once here, not inside a run's timeouts.
	DS_ACCELERATOR=cpu .venv/bin/python -c 'import logging; logging.basicConfig(level=logging.INFO, format="%(message)s"); from swcm.training.ds_ops import load_shm_comm_op; load_shm_comm_op()'
	touch $(VENV_STAMP)

setup: $(VENV_STAMP)

# Everything (what CI runs). Without CUDA, tests/conftest.py runs the Triton kernels under the interpreter.
# TEST_WORKERS pytest-xdist processes, a test file each at a time (--dist loadfile: a file's shared runs are made once);
# two on two cores overlap one test's process start-up and waiting with another's work (docs/testing.md).
# PYTHONDONTWRITEBYTECODE is emptied for the tests: the suite starts ~400 Python processes, and each would compile
# swcm's sources again (~0.3 s) instead of reading the __pycache__ the first one writes. One torch thread per
# worker when two share the two cores (more would spin against each other and the ranks the other one starts).
TEST_WORKERS ?= 2
TEST_ENV := PYTHONDONTWRITEBYTECODE= OMP_NUM_THREADS=2
PARALLEL_TEST_ENV := PYTHONDONTWRITEBYTECODE= OMP_NUM_THREADS=1
test: setup
	$(PARALLEL_TEST_ENV) $(PY) -m pytest -q -m "not extended" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# What `make test` leaves out: the same checks on more ZeRO stages, world sizes and inputs (docs/testing.md).
test-extended: setup
	$(PARALLEL_TEST_ENV) $(PY) -m pytest -q -m extended -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The fast tier while working: no multi-process or long tests (under 2 minutes); `make test` runs them all.
test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "not distributed and not slow"

# The oldest transformers setup.py admits (5.23.0), laid over the venv's newer one: the model, its export and remote
# loading, generation and HF fine-tuning tests (about 5 minutes).
TRANSFORMERS_FLOOR := 5.23.0
test-transformers-floor: setup
	.venv/bin/pip install -q --no-deps --target .venv/transformers-$(TRANSFORMERS_FLOOR) transformers==$(TRANSFORMERS_FLOOR)
	PYTHONPATH=$(CURDIR)/.venv/transformers-$(TRANSFORMERS_FLOOR) OMP_NUM_THREADS=2 $(PY) -m pytest -q \
	    tests/test_model_export.py tests/test_model_attention.py tests/test_model_init.py tests/test_model_encoder.py \
	    tests/test_kernel_import.py tests/test_hf_finetune.py tests/test_model_card.py -k "not terminal"

# On one CUDA GPU (at most ~8 min): kernel tests compiled, attention vs SDPA-flash, fused LM head vs naive/Liger,
# 30 training steps attn auto vs sdpa; without CUDA a dry run at tiny shapes (benchmarks/gpu_check.py).
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

demo: setup
	bash launch/demo.sh

clean-demo:
	rm -rf runs/demo

# The paper's ablations in miniature plus the HF warm start (docs/ablations.md): the full run continues where it
# stopped; the smoke size (every stage, tiny: what CI runs) starts afresh.
ablate: setup
	$(PY) launch/ablate.py --out runs/ablate-mini

ablate-smoke: setup
	rm -rf runs/ablate-smoke
	$(PY) launch/ablate.py --smoke --out runs/ablate-smoke
