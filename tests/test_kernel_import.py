"""swcm beside the newest Hugging Face stack (issue 19): our kernels install as `swcm_kernels`, so `import kernels` is
Hugging Face's (a dependency of transformers >= 5.25) from the repository root and from elsewhere, in editable and
regular installs, with and without build isolation; and a kernel path that cannot load is an error, never a silent
fallback to the slow path."""

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers_model import padded_batch, random_xlmr, swcm_from_xlmr, tiny_xlmr_config

import swcm.modeling_swcm as modeling

ROOT = Path(__file__).resolve().parents[1]
HF_KERNELS = subprocess.run([sys.executable, "-c", "import kernels; kernels.get_kernel"], cwd="/",
                            capture_output=True).returncode == 0

# What a user's process checks, wherever it runs: `kernels` is not ours (Hugging Face's when installed), transformers
# loads a model (it imports `kernels` inside from_pretrained), `auto` picks swcm's Triton attention for CUDA
# tensors, and a training forward runs the fused head + loss (no logits).
PROBE = """
import importlib.util, sys, torch
spec = importlib.util.find_spec("kernels")
assert spec is None or "{root}/kernels" not in str(spec.origin or spec.submodule_search_locations), spec
if {hf_kernels}:
    import kernels
    assert hasattr(kernels, "get_kernel"), kernels.__file__
from transformers import XLMRobertaConfig, XLMRobertaModel
XLMRobertaModel(XLMRobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=37)).save_pretrained("{tmp}/xlmr")
XLMRobertaModel.from_pretrained("{tmp}/xlmr")
from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration, resolve_attn_implementation
assert resolve_attn_implementation("auto", "cuda") == "triton"
model = SWCMForConditionalGeneration(SWCMConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=37))
out = model(input_ids=torch.tensor([[0, 5, 2]]), labels=torch.tensor([[7, 8, 2]]))
assert out.logits is None and out.loss is not None
print("PROBE OK", sys.modules["swcm_kernels.lm_head_ce"].__file__)
"""


def _probe(cwd: Path, env: dict, tmp: Path) -> str:
    script = PROBE.format(root=ROOT, hf_kernels=HF_KERNELS, tmp=tmp)
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "PROBE OK" in proc.stdout, proc.stderr[-3000:]
    return proc.stdout


def test_kernels_is_not_ours_in_this_process():
    """pytest runs with the repository root on sys.path (python -m pytest): `kernels` must still not be ours."""
    spec = __import__("importlib.util").util.find_spec("kernels")
    assert spec is None or str(ROOT / "kernels") not in str(spec.origin or spec.submodule_search_locations)
    if HF_KERNELS:
        import kernels
        assert hasattr(kernels, "get_kernel")
    import swcm_kernels.attention
    assert Path(swcm_kernels.attention.__file__).resolve() == ROOT / "kernels" / "attention.py"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["repository root on PYTHONPATH", "elsewhere"])
def test_installed_swcm_beside_hugging_faces_kernels(where, tmp_path):
    env = {"PYTHONPATH": str(ROOT)} if where.startswith("repository") else {}
    _probe(ROOT if env else tmp_path, {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, tmp_path)


@pytest.mark.slow
def test_builds_without_isolation_and_installs_no_kernels_package(tmp_path):
    """`pip install --no-build-isolation` builds in this environment with the repository root on sys.path (where a
    kernels/__init__.py of ours once shadowed Hugging Face's): the editable and the regular wheel both build there,
    neither holds a top-level `kernels`, and a regular install works from elsewhere."""
    for hook in ("build_wheel", "build_editable"):   # PEP 517 hooks, as pip calls them: one process each
        (tmp_path / hook).mkdir()
        proc = subprocess.run([sys.executable, "-c", f"import sys, setuptools.build_meta as b; b.{hook}(sys.argv[1])",
                               str(tmp_path / hook)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    wheel, = (tmp_path / "build_wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "kernels" not in tops and {"swcm", "swcm_kernels"} <= tops, tops
    assert {"swcm_kernels/attention.py", "swcm_kernels/lm_head_ce.py", "swcm_kernels/triton_support.py"} <= set(names)
    editable, = (tmp_path / "build_editable").glob("*.whl")
    finder = [n for n in zipfile.ZipFile(editable).namelist() if n.endswith("finder.py")]
    mapping = zipfile.ZipFile(editable).read(finder[0]).decode()
    assert "'swcm_kernels': " in mapping and str(ROOT / "kernels") in mapping and "'kernels'" not in mapping

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    assert not (site / "kernels").exists() and (site / "swcm_kernels" / "attention.py").is_file()
    out = _probe(tmp_path, {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert str(site / "swcm_kernels" / "lm_head_ce.py") in out


def _tiny_model():
    return swcm_from_xlmr(random_xlmr(tiny_xlmr_config()), normal_layer_every=1)


def test_hidden_kernels_are_errors_not_fallbacks(monkeypatch):
    """Asked for and not loadable: the Triton attention and the fused head raise, naming the cause."""
    monkeypatch.setattr(modeling, "_load_kernel", lambda name: (None, "hidden by the test"))
    model = _tiny_model()
    with pytest.raises(ImportError, match="'lm_head_ce' cannot be imported: hidden by the test"):
        model(**padded_batch())
    with pytest.raises(ImportError, match="'lm_head_ce' cannot be imported"):
        modeling.resolve_lm_head(model.config, "cpu")
    model.config.fused_lm_head_ce = False
    assert modeling.resolve_lm_head(model.config, "cpu") == "naive" and model(**padded_batch()).logits is not None


def test_auto_on_cuda_without_kernels_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(modeling, "_load_kernel", lambda name: (None, "hidden by the test"))
    modeling._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        picks = {modeling.resolve_attn_implementation("auto", "cuda") for _ in range(3)}
    warnings = [r for r in caplog.records if "Triton attention is unavailable" in r.getMessage()]
    assert picks == {"sdpa"} and len(warnings) == 1 and "hidden by the test" in warnings[0].getMessage()
    assert modeling.resolve_attn_implementation("auto", "cpu") == "sdpa"


def test_export_carries_its_kernels(tmp_path):
    """save_pretrained writes the kernel sources beside the modeling file, and the remote-code copy of the model
    loads them from there (not from swcm_kernels)."""
    from without_swcm import run_without_swcm

    model = _tiny_model()
    model.save_pretrained(tmp_path / "export")
    for name in ("modeling_swcm.py", "seq2seq_layout.py", *(f"{m}.py" for m in modeling.KERNEL_MODULES)):
        assert (tmp_path / "export" / name).is_file(), name
    assert json.loads((tmp_path / "export" / "config.json").read_text())["auto_map"] == modeling.AUTO_MAP
    batch = padded_batch()
    torch.save(batch, tmp_path / "batch.pt")
    expected = model(**batch).loss
    proc = run_without_swcm(f"""
import sys, torch
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "export")!r}, trust_remote_code=True)
modeling = sys.modules[type(model).__module__]
assert modeling.resolve_attn_implementation("auto", "cuda") == "triton"
assert modeling.resolve_lm_head(model.config, "cpu") == "fused-torch"
out = model(**torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True))
source = modeling.kernel_module("lm_head_ce").__name__
assert out.logits is None and "swcm" not in sys.modules and "swcm_kernels" not in source, source
print("LOSS", out.loss.item())
""", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss = float(proc.stdout.split("LOSS")[1])
    assert abs(loss - expected.item()) < 1e-5
