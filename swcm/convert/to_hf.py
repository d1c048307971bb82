"""DeepSpeed run -> Hugging Face directory (`launch/convert_checkpoint.py to-hf`).

The newest complete checkpoint of a run (any ZeRO stage) is consolidated with DeepSpeed's own utilities,
loaded strictly into the model described by the run's saved config, written as safetensors with the tokenizer,
the modeling file and a model card, and then verified: a fresh Python process that cannot import swcm loads the
directory with `trust_remote_code=True` and must reproduce this process's logits on a probe batch.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

from swcm.convert import ConversionError
from swcm.convert.staging import staged_directory
from swcm.output_guard import check_output_dir, check_writable
from swcm.convert.model_card import DEFAULT_LICENSE, check_license, front_matter, usage_sections

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Max |logit difference| the reloaded copy may show: same code and weights, so only kernel scheduling differs.
VERIFY_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


def _checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    from swcm.training.checkpointing import complete_checkpoints

    found = dict(complete_checkpoints(run_dir / "checkpoints"))
    if not found:
        raise ConversionError(f"{run_dir}: no complete checkpoint under checkpoints/ (is this a pretrain.py --out?)")
    if step is None:
        step = max(found)
    if step not in found:
        raise ConversionError(f"{run_dir}: no complete checkpoint of step {step} (have {sorted(found)})")
    return step, found[step]


def run_inputs(run_dir: Path) -> list[Path]:
    """What a conversion reads in a run directory. An output may sit beside them in the run (finetune.py exports to
    RUN/hf) but never be, hold or lie inside one of them."""
    return [run_dir / name for name in ("checkpoints", "model", "config.json", "metrics.jsonl")]


def _run_info(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read the run's config ({e})") from None


def consolidated_state_dict(run_dir: str | Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of a run's checkpoint (newest complete one unless `step` is given).
    ConversionError names a missing or damaged checkpoint file, or the checkpoint DeepSpeed could not read."""
    from swcm.training.checkpointing import damage

    run_dir = Path(run_dir)
    step, ckpt = _checkpoint(run_dir, step)
    info = _run_info(run_dir)
    stage = info["deepspeed"].get("zero_optimization", {}).get("stage", 0)
    problem = damage(ckpt, stage)
    if problem:
        raise ConversionError(problem)
    try:
        if stage == 0:
            # ZeRO-0 checkpoints already hold the whole model; zero_to_fp32 does not handle them. The file is
            # DeepSpeed's own, written by this run: loaded tensors-only all the same.
            path = ckpt / "mp_rank_00_model_states.pt"
            state = torch.load(path, map_location="cpu", weights_only=True)["module"]
            return {k: v.float() for k, v in state.items()}
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name))
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError, AssertionError, OSError) as e:
        raise ConversionError(f"{ckpt}: DeepSpeed cannot read this checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_checkpoint_into(model, run_dir: str | Path, step: int | None, where: str, dtype: str):
    """`model` (built from the run's config) holding the weights of the run's checkpoint, tied, cast to `dtype`, in
    eval mode. ConversionError names `where` when the checkpoint does not fit the model."""
    result = model.load_state_dict(consolidated_state_dict(run_dir, step), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(f"{where}: checkpoint does not fit the run's model config: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    model.tie_weights()
    return model.to(DTYPES[dtype]).eval()


def _model_card(run_dir: Path, step: int, info: dict, model, n_params: int, dtype: str, out_name: str,
                license: str) -> str:
    """README.md of an export: metadata block, the training facts (pretraining or fine-tuning, from the run's config
    and metrics), the seq2seq convention, a runnable fine-tuning snippet (loading the model as `out_name`) and the
    licence note."""
    config = model.config
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in rows if r["step"] <= step][-1:] or [{}]
    ds = info["deepspeed"]
    what = "fine-tuning" if info.get("task") == "finetune" else "pretraining (DAE + MT)"
    forced = model.generation_config.forced_bos_token_id
    tag = next((f"<{c}>" for c, i in config.lang_token_ids.items() if i == forced), None)
    generation = (f"`generation_config.json` forces `{tag}` after `<s>`, so a plain `generate()` produces that "
                  "language." if tag else "Nothing is forced in `generation_config.json`: choose the target "
                  "language as below.")
    training = (f"{what}: checkpoint of step {step}, training loss {last[0].get('loss', float('nan')):.4f} at that "
                f"step; {info['world_size']} ranks, ZeRO stage {ds.get('zero_optimization', {}).get('stage', 0)}, "
                f"{'bf16' if ds.get('bf16', {}).get('enabled') else 'fp32'}; run config in `training_config.json`")
    return f"""{front_matter(config.lang_codes, license)}
# XLM-SWCM (trained with swcm)

Load with `AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)`. {generation}

- decoder: {config.decoder_layers} layers `{config.layer_pattern}` (C = custom, initialised from the encoder;
  N = normal), LM head {"tied to" if config.tie_word_embeddings else "separate from"} the word embedding
- parameters: {n_params:,}; weights stored as {dtype}
- language tags: {", ".join(f"`<{c}>`={i}" for c, i in config.lang_token_ids.items())}
- {training}

{usage_sections(out_name, license)}"""


# Run with `python -S` plus site-packages on sys.path: .pth files (swcm's editable-install hook) stay unread,
# so the directory must load on its own, as it will for a user without swcm.
_VERIFY = r"""
import atexit, gc, json, sys
atexit.register(gc.freeze)   # exit without walking torch's objects (swcm.fast_exit, which this process cannot import)
sys.path.append(sys.argv[4])
import torch
from safetensors.torch import save_file
try:
    import swcm  # noqa: F401
    sys.exit("swcm is importable in the verification process")
except ImportError:
    pass
from transformers import AutoModelForSeq2SeqLM
model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
probe = {k: torch.tensor(v) for k, v in json.load(open(sys.argv[2])).items()}
with torch.no_grad():
    logits = model(**probe).logits.float()
save_file({"logits": logits.contiguous()}, sys.argv[3])
"""


def _verify(out_dir: Path, model, tokenizer, dtype: str) -> float:
    """Reload `out_dir` in a fresh process without swcm and return the max |logit difference| to `model`."""
    from safetensors.torch import load_file

    from swcm.seq2seq_inputs import build_seq2seq_inputs

    codes = list(model.config.lang_token_ids)
    src, tgt = codes[0], codes[-1]
    probe = build_seq2seq_inputs(tokenizer, ["probe one", "a second, longer probe sentence"],
                                 ["target", "another target text"], src, tgt)
    probe.pop("labels")
    with torch.no_grad():
        expected = model(**probe).logits.float()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "probe.json").write_text(json.dumps({k: v.tolist() for k, v in probe.items()}))
        env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        res = subprocess.run([sys.executable, "-S", "-c", _VERIFY, str(out_dir.resolve()), "probe.json", "logits.st",
                              sysconfig.get_paths()["purelib"]],
                             cwd=tmp, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise ConversionError(f"the exported directory does not load on its own: {res.stderr.strip()[-500:]}")
        got = load_file(str(Path(tmp) / "logits.st"))["logits"]
    diff = (got - expected).abs().max().item()
    if diff > VERIFY_TOLERANCE[dtype]:
        raise ConversionError(f"the exported directory's logits differ from the checkpoint's by {diff:.3g} "
                              f"(> {VERIFY_TOLERANCE[dtype]})")
    return diff


def export_to_hf(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None, dtype: str = "float32",
                 overwrite: bool = False, verify: bool = True, forced_bos_token_id: int | None = None,
                 license: str = DEFAULT_LICENSE) -> Path:
    """Write the HF directory of a run's checkpoint to `out_dir` (atomically) and verify it; return out_dir.
    `forced_bos_token_id` (a target-language tag) goes into generation_config.json, so that a plain `generate()`
    produces that language; `license` (a Hub licence id) goes into the model card's metadata."""
    from swcm.tokenization import load_tokenizer
    from swcm.modeling_swcm import SWCMConfig, SWCMForConditionalGeneration

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    check_license(license)
    if not run_dir.is_dir():
        raise ConversionError(f"run directory {run_dir} not found")
    check_output_dir(out_dir, run_inputs(run_dir), overwrite=overwrite)
    check_writable(out_dir)
    step, ckpt = _checkpoint(run_dir, step)
    info = _run_info(run_dir)
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir}: the run's model config is missing")
    config = SWCMConfig.from_pretrained(str(model_dir))
    tokenizer = load_tokenizer(model_dir)
    log.info("consolidating %s", ckpt)
    model = load_checkpoint_into(SWCMForConditionalGeneration(config), run_dir, step, str(ckpt), dtype)
    if forced_bos_token_id is not None:
        model.generation_config.forced_bos_token_id = forced_bos_token_id

    with staged_directory(out_dir) as staging:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        n_params = sum(p.numel() for p in model.parameters())
        (staging / "README.md").write_text(_model_card(run_dir, step, info, model, n_params, dtype,
                                                       out_dir.name, license))
        (staging / "training_config.json").write_text(json.dumps(info, indent=2))
        if verify:
            diff = _verify(staging, model, tokenizer, dtype)
            log.info("verified: a fresh process reproduces the logits (max |diff| %.2e)", diff)
    log.info("wrote %s (step %d, %s parameters, %s)", out_dir, step, f"{n_params:,}", dtype)
    return out_dir
