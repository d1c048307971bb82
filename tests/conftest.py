"""Shared fixtures: a real sentencepiece tokenizer trained on data/demo and tiny random XLM-R checkpoints.

Without CUDA the Triton kernels run on CPU tensors under the interpreter, and TRITON_INTERPRET must be set before
triton is first imported anywhere (transformers may import it): it is set here, at collection time. With CUDA it is
left alone, so the `gpu` tests run the compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_tokenizer_dir(tmp_path_factory):
    """A 2,000-piece XLM-R tokenizer trained on the demo corpus (all five languages)."""
    from swcm.assets import build_demo_tokenizer

    out = tmp_path_factory.mktemp("assets") / "tokenizer"
    build_demo_tokenizer(out, vocab_size=2000)
    return out


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory, demo_tokenizer_dir):
    """A tiny random XLM-R (`XLMRobertaForMaskedLM` layout, 4 layers, hidden 64) with the demo tokenizer."""
    from swcm.assets import build_tiny_xlmr

    out = tmp_path_factory.mktemp("assets") / "tiny-xlmr"
    build_tiny_xlmr(out, demo_tokenizer_dir)
    return out


@pytest.fixture(scope="session")
def tokenizer(demo_tokenizer_dir, tmp_path_factory):
    """The demo tokenizer with the language tags added, as a model's tokenizer has them; `.saved_dir` holds it."""
    from transformers import AutoTokenizer

    from swcm.tokenization import add_language_tags

    tok = AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))
    add_language_tags(tok)
    out = tmp_path_factory.mktemp("tok") / "tagged"
    tok.save_pretrained(str(out))
    tok.saved_dir = out
    return tok


# The longest files first (measured: the demo ~5 min, the pretraining runs ~6, ablate.py --smoke ~3, ...): pytest-xdist
# hands whole files to its workers in this order (with --no-loadscope-reorder, as `make test` runs it; by default it
# would hand out the files with the most tests first), and a long file handed out last would run alone at the end.
LONGEST_FIRST = ("test_pretrain_distributed.py", "test_demo.py", "test_ablate.py", "test_finetune_distributed.py",
                 "test_mlm.py", "test_evaluate.py", "test_token_normalisation.py", "test_trim_vocab_training.py",
                 "test_gpu_check.py", "test_bench_peer.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order


# The session fails if it leaves /dev/shm entries or processes behind (tests/session_guard.py).
from session_guard import pytest_runtest_logfinish, pytest_sessionfinish, pytest_sessionstart  # noqa: E402,F401
