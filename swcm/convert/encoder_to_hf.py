"""Masked-LM encoder run (`launch/pretrain_encoder.py`) -> Hugging Face XLM-R directory (`convert_checkpoint.py
to-hf` dispatches here when the run's config.json names the task "mlm").

The checkpoint is consolidated by `swcm.convert.to_hf.consolidated_state_dict` (DeepSpeed's own utilities, any
ZeRO stage) and loaded strictly into `XLMRobertaForMaskedLM` built from the run's saved config; the directory
holds the weights (safetensors), the config, the run's tokenizer (with its language tags) and a model card. It is
verified in a fresh process that loads it as `XLMRobertaForMaskedLM` (its logits must match this process's) and as
the bare `XLMRobertaModel` -- what `convert_checkpoint.py from-encoder` reads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from swcm.convert import ConversionError
from swcm.convert.staging import staged_directory
from swcm.output_guard import check_output_dir, check_writable

log = logging.getLogger(__name__)

TASK = "mlm"   # MLMTask.name, as the trainer records it in RUN/config.json
VERIFY_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


def is_encoder_run(run_dir: str | Path) -> bool:
    """True when `run_dir` is a `launch/pretrain_encoder.py` run (its config.json records the task "mlm")."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text()).get("task") == TASK
    except (OSError, ValueError, AttributeError):
        return False


_VERIFY = r"""
import json, sys
import torch
from safetensors.torch import save_file
from transformers import XLMRobertaForMaskedLM, XLMRobertaModel
probe = {k: torch.tensor(v) for k, v in json.load(open(sys.argv[2])).items()}
with torch.no_grad():
    logits = XLMRobertaForMaskedLM.from_pretrained(sys.argv[1]).eval()(**probe).logits.float()
    hidden = XLMRobertaModel.from_pretrained(sys.argv[1]).eval()(**probe).last_hidden_state.float()
save_file({"logits": logits.contiguous(), "hidden": hidden.contiguous()}, sys.argv[3])
"""


def _added_special_tokens(tokenizer) -> list[str]:
    """The special tokens beyond XLM-R's own five: the language tags."""
    own = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token, tokenizer.mask_token}
    return [t for t in tokenizer.all_special_tokens if t not in own]


def _verify(out_dir: Path, model, tokenizer, dtype: str) -> float:
    """Reload `out_dir` in a fresh process as XLMRobertaForMaskedLM and XLMRobertaModel; return the max |difference|
    of its logits and last hidden states to `model`'s on a probe batch."""
    from safetensors.torch import load_file

    tags = _added_special_tokens(tokenizer)
    texts = [f"{tags[0] if tags else ''} probe one", f"{tags[-1] if tags else ''} a second, longer probe <mask>"]
    probe = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    probe.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**probe, output_hidden_states=True)
        expected = {"logits": out.logits.float(), "hidden": out.hidden_states[-1].float()}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "probe.json").write_text(json.dumps({k: v.tolist() for k, v in probe.items()}))
        env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        res = subprocess.run([sys.executable, "-c", _VERIFY, str(out_dir.resolve()), "probe.json", "out.st"], cwd=tmp,
                             env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise ConversionError(f"the exported directory does not load as XLM-R: {res.stderr.strip()[-500:]}")
        got = load_file(str(Path(tmp) / "out.st"))
    diff = max((got[k] - expected[k]).abs().max().item() for k in expected)
    if diff > VERIFY_TOLERANCE[dtype]:
        raise ConversionError(f"the exported encoder's outputs differ from the checkpoint's by {diff:.3g} "
                              f"(> {VERIFY_TOLERANCE[dtype]})")
    return diff


def _model_card(run_dir: Path, step: int, info: dict, config, n_params: int, dtype: str, tokenizer) -> str:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in rows if r.get("step", 0) <= step][-1:] or [{}]
    ds = info["deepspeed"]
    tags = ", ".join(f"{t}={tokenizer.convert_tokens_to_ids(t)}" for t in _added_special_tokens(tokenizer))
    data = info["run"]["data"]
    keep = 1 - data["mask_fraction"] - data["random_fraction"]
    return f"""# XLM-R encoder (masked-LM pretraining with swcm)

- {config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, intermediate \
{config.intermediate_size}, vocabulary {config.vocab_size}; {n_params:,} parameters stored as {dtype}
- language tags: {tags or "none"}
- pretraining: {step} optimizer steps of masked LM ({data["mlm_probability"]:.0%} of the ordinary tokens scored: \
{data["mask_fraction"]:.0%} `<mask>`, {data["random_fraction"]:.0%} random, {keep:.0%} unchanged), final training \
loss {last[0].get("loss", float("nan")):.4f}, {info["world_size"]} rank(s), ZeRO stage \
{ds.get("zero_optimization", {}).get("stage", 0)}; run config in `training_config.json`

Loads as `XLMRobertaForMaskedLM` or `XLMRobertaModel`; `launch/convert_checkpoint.py from-encoder --encoder <this
dir>` builds an XLM-SWCM model from it.
"""


def export_encoder_to_hf(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None,
                         dtype: str = "float32", overwrite: bool = False, verify: bool = True) -> Path:
    """Write the XLM-R directory of an MLM run's checkpoint (the newest complete one unless `step`) to `out_dir`
    (atomically), verified unless `verify=False`; return out_dir. ConversionError on bad input, nothing written."""
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    from swcm.convert.to_hf import DTYPES, load_checkpoint_into, run_inputs
    from swcm.tokenization import load_tokenizer
    from swcm.training.checkpointing import complete_checkpoints

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    check_output_dir(out_dir, run_inputs(run_dir), overwrite=overwrite)
    check_writable(out_dir)
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir}: the run's model config is missing")
    steps = [s for s, _ in complete_checkpoints(run_dir / "checkpoints")]
    if not steps:
        raise ConversionError(f"{run_dir}: no complete checkpoint under checkpoints/")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ConversionError(f"{run_dir}: no complete checkpoint of step {step} (have {steps})")
    info = json.loads((run_dir / "config.json").read_text())
    config = XLMRobertaConfig.from_pretrained(str(model_dir))
    tokenizer = load_tokenizer(model_dir)
    model = load_checkpoint_into(XLMRobertaForMaskedLM(config), run_dir, step, f"{run_dir} (step {step})", dtype)

    n_params = sum(p.numel() for p in model.parameters())
    with staged_directory(out_dir) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / "README.md").write_text(_model_card(run_dir, step, info, config, n_params, dtype, tokenizer))
        (staging / "training_config.json").write_text(json.dumps(info, indent=2))
        if verify:
            diff = _verify(staging, model, tokenizer, dtype)
            log.info("verified: a fresh process loads it as XLM-R and reproduces the outputs (max |diff| %.2e)", diff)
    log.info("wrote %s (XLM-R encoder, step %d, %s parameters, %s)", out_dir, step, f"{n_params:,}", dtype)
    return out_dir
