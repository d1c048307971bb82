"""Masked-LM pretraining of the encoder: the masking rates (measured over many samples), the masked stream (clean
positions untouched, tags never masked, exact on resume), the loss against transformers' own, and end to end with
DeepSpeed: the loss falls on the demo corpus, --resume reproduces the uninterrupted losses, the export loads as
`transformers.XLMRobertaModel` and `from-encoder` accepts it (language tags already present); continuing from an
XLM-R directory without tags adds them."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_data import head_lines
import torch

from swcm.data.config import DataConfig
from swcm.data.mlm import MaskedLMStream, MaskingRates, mask_tokens, ordinary_tokens
from swcm.data.prepare import prepare
from swcm.data.stream import PretrainStream
from swcm.seq2seq_layout import IGNORE_INDEX
from swcm.training.checkpointing import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
PY = sys.executable
DS = str(Path(sys.executable).with_name("deepspeed"))
SWCM_LAUNCH = (PY, "-m", "swcm.launcher")   # ~5 s a launch less than `deepspeed` (no DeepSpeed import before the ranks)


def _sigmas(observed: float, p: float, n: int) -> float:
    """How many binomial standard deviations `observed` (a fraction of n trials) lies from p."""
    return abs(observed - p) / math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------------------------ masking


def test_masking_follows_the_stated_rates():
    """Over 400k positions: 15% of the ordinary tokens scored, of those 80% <mask>, 10% random, 10% unchanged;
    special positions never touched; random replacements uniform over the ordinary tokens only."""
    special, vocab, mask_id = [0, 1, 2, 3, 4, 25, 26], 27, 4     # <s> <pad> </s> <unk> <mask> + two "tags"
    ordinary = np.ones(vocab, dtype=bool)
    ordinary[special] = False
    pool = np.flatnonzero(ordinary)
    rng = np.random.default_rng(7)
    ids = rng.choice(pool, size=(4000, 100))
    ids[:, 0], ids[:, 1], ids[:, -1] = 0, 25, 2                   # <s> <tag> ... </s>
    ids[::3, -20:] = 1                                            # padding
    inputs, labels = mask_tokens(ids, ordinary, mask_id, MaskingRates(), np.random.default_rng(1))

    eligible = ordinary[ids]
    selected = labels != IGNORE_INDEX
    assert not selected[~eligible].any() and (inputs[~eligible] == ids[~eligible]).all()
    assert (labels[selected] == ids[selected]).all()
    n = int(eligible.sum())
    assert _sigmas(selected.sum() / n, 0.15, n) < 5
    k = int(selected.sum())
    masked = inputs[selected] == mask_id
    kept = inputs[selected] == ids[selected]
    replaced = ~masked & ~kept
    assert _sigmas(masked.mean(), 0.8, k) < 5
    # a random draw equals the original with probability 1/|pool|: unchanged = 0.1 + 0.1/|pool|
    assert _sigmas(kept.mean(), 0.1 + 0.1 / len(pool), k) < 5
    assert _sigmas(replaced.mean(), 0.1 - 0.1 / len(pool), k) < 5
    draws = inputs[selected][replaced]
    assert ordinary[draws].all()
    counts = np.bincount(draws, minlength=vocab)[pool]
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
    assert chi2 < 60, chi2        # 19 degrees of freedom: P(chi2 > 60) < 1e-5 for uniform draws


def test_masking_is_decided_by_the_generator_alone():
    ordinary = np.ones(50, dtype=bool)
    ordinary[:5] = False
    ids = np.random.default_rng(0).integers(5, 50, size=(8, 30))
    a = mask_tokens(ids, ordinary, 4, MaskingRates(), np.random.default_rng(3))
    b = mask_tokens(ids, ordinary, 4, MaskingRates(), np.random.default_rng(3))
    c = mask_tokens(ids, ordinary, 4, MaskingRates(), np.random.default_rng(4))
    assert all((x == y).all() for x, y in zip(a, b))
    assert not (a[1] == c[1]).all()


def test_masking_rates_are_checked():
    with pytest.raises(ValueError, match="summing to at most 1"):
        MaskingRates(0.15, 0.8, 0.3)
    with pytest.raises(ValueError, match="select"):
        MaskingRates(0.0)


# ------------------------------------------------------------------------------------------------ the stream


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    """Demo text (mono bo/kk/ug/zh, NTREX zh-bo pairs) as shards tokenised with the tagged demo tokenizer."""
    raw = tmp_path_factory.mktemp("raw")
    mono = [(lang, head_lines(DEMO / f"mono/{lang}.txt", raw / f"{lang}.txt", 400))
            for lang in ("bo", "kk", "ug", "zh")]
    ntrex = DEMO / "parallel" / "ntrex128" / "ntrex128.train"
    parallel = [("zh", "bo", head_lines(Path(f"{ntrex}.zh"), raw / "p.zh", 100),
                 head_lines(Path(f"{ntrex}.bo"), raw / "p.bo", 100))]
    out = tmp_path_factory.mktemp("mlm-shards") / "train"
    prepare(tokenizer.saved_dir, out, mono=mono, parallel=parallel, samples_per_shard=100, show_progress=False)
    return out


def _stream(shards, tokenizer, masked=True, seed=5):
    cfg = DataConfig(shards=str(shards), mt_ratio=0.0, mask_ratio=0.0, permute_sentences=False, max_tokens=2048,
                     max_samples=16, num_workers=0, seed=seed)
    stream = PretrainStream(cfg, tokenizer, rank=0, world_size=1)
    return MaskedLMStream(stream, tokenizer, MaskingRates(), seed=seed, rank=0) if masked else stream


def _take(iterable, n):
    it = iter(iterable)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_masked_stream_corrupts_only_ordinary_tokens_of_the_clean_samples(shards, tokenizer):
    clean = _take(_stream(shards, tokenizer, masked=False), 6)
    masked = _take(_stream(shards, tokenizer), 6)
    tags = {tokenizer.convert_tokens_to_ids(f"<{c}>") for c in ("bo", "kk", "ug", "zh")}
    ordinary = ordinary_tokens(tokenizer)
    scored = total = 0
    for c, m in zip(clean, masked):
        assert set(m) >= {"input_ids", "attention_mask", "labels"} and "decoder_input_ids" not in m
        assert c["task"] == ["dae"] * len(c["task"])                  # mt_ratio 0: monolingual samples only
        x, y = m["input_ids"], m["labels"]
        assert x.shape == y.shape == c["input_ids"].shape
        assert int(x[:, 0].unique().item()) == tokenizer.bos_token_id
        assert set(c["input_ids"][:, 1].tolist()) <= tags and (x[:, 1] == c["input_ids"][:, 1]).all()
        unscored = y == IGNORE_INDEX
        assert (x[unscored] == c["input_ids"][unscored]).all()        # nothing else changed
        assert (y[~unscored] == c["input_ids"][~unscored]).all()      # labels are the clean tokens
        assert torch.from_numpy(ordinary)[c["input_ids"][~unscored]].all()
        scored += int((~unscored).sum())
        total += int(torch.from_numpy(ordinary)[c["input_ids"]].logical_and(c["attention_mask"].bool()).sum())
    assert _sigmas(scored / total, 0.15, total) < 5


def test_masked_stream_resumes_with_the_same_masks(shards, tokenizer):
    full = _take(_stream(shards, tokenizer), 7)
    first = _stream(shards, tokenizer)
    _take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _stream(shards, tokenizer)
    resumed.load_state_dict(state)
    for a, b in zip(full[3:], _take(resumed, 4)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    other_seed = _take(_stream(shards, tokenizer, seed=6), 1)[0]
    assert not torch.equal(other_seed["labels"], full[0]["labels"])


# ------------------------------------------------------------------------------------------------ the model


def test_mlm_loss_is_transformers_masked_lm_loss(tokenizer):
    """Same weights: the trainer's loss (head on the scored positions only) equals XLMRobertaForMaskedLM's own
    (logits everywhere, mean cross-entropy over labels != -100); sum / num_items_in_batch with a count given."""
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    from swcm.training.mlm_task import XLMRobertaMLMTrainer

    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, pad_token_id=1, type_vocab_size=1)
    torch.manual_seed(0)
    ours = XLMRobertaMLMTrainer(config).eval()
    ref = XLMRobertaForMaskedLM(config).eval()
    ref.load_state_dict(ours.state_dict())
    ids = torch.randint(5, len(tokenizer) - 5, (3, 17))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    ids[0, 12:] = 1
    inputs, labels = mask_tokens(ids.numpy(), ordinary_tokens(tokenizer), tokenizer.mask_token_id,
                                 MaskingRates(select=0.3), np.random.default_rng(0))
    inputs, labels = torch.from_numpy(inputs), torch.from_numpy(labels)
    out = ours(inputs, mask, labels)
    expected = ref(input_ids=inputs, attention_mask=mask, labels=labels).loss
    assert torch.allclose(out.loss, expected, atol=1e-5)
    n = int((labels != IGNORE_INDEX).sum())
    summed = ours(inputs, mask, labels, num_items_in_batch=torch.tensor(7.0))
    assert torch.allclose(summed.loss, expected * n / 7, atol=1e-5)
    assert (out.token_losses[labels == IGNORE_INDEX] == 0).all() and not out.token_losses.requires_grad
    assert torch.allclose(out.token_losses.sum() / n, expected, atol=1e-5)


def test_pretrain_encoder_rejects_bad_config_before_any_work(tmp_path, capsys, demo_tokenizer_dir):
    sys.path.insert(0, str(ROOT / "launch"))
    import pretrain_encoder

    cases = [({"model": {"path": str(demo_tokenizer_dir), "tokenizer": str(demo_tokenizer_dir)}},
              "model.path / model.tokenizer: set exactly one"),
             ({"model": {"tokenizer": str(demo_tokenizer_dir)}, "data": {"mask_fraction": 0.95}},
              "data.mask_fraction / data.random_fraction"),
             ({"model": {"tokenizer": str(tmp_path)}}, "not a tokenizer directory"),
             ({"data": {"mlm_probability": 1.5}}, "mlm_probability")]
    for i, (config, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(config))
        code = pretrain_encoder.main(["--config", str(path), "--deepspeed_config", str(ROOT / "ds_configs/zero0.json"),
                                      "--out", str(tmp_path / f"run{i}")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not (tmp_path / f"run{i}").exists()


# ------------------------------------------------------------------------------------------------ end to end


def _env():
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(cmd, timeout=600):
    res = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlm(tmp, shards, out, *, ranks=2, steps=40, extra=(), model=None, launcher=SWCM_LAUNCH):
    """`swcm-launch launch/pretrain_encoder.py` (or `deepspeed ...`) on `shards`: a small XLM-R from scratch over the
    tokenizer the shards were made with, or `model`."""
    model = model or {"tokenizer": str(shards.parent / "tokenizer"), "hidden_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "intermediate_size": 128}
    config = {"model": model,
              "data": {"shards": str(shards), "max_tokens": 1024, "num_workers": 1, "seed": 3},
              "train": {"max_steps": steps, "lr": 3e-3, "warmup_ratio": 0.1, "micro_batch_size": 16, "log_every": 5,
                        "save_every": 4, "keep_last": 3, "dev_every": 0, "seed": 3}}
    path = tmp / f"{Path(out).name}.json"
    path.write_text(json.dumps(config))
    return _run([*launcher, "--num_gpus", ranks, "--master_port", _free_port(), "launch/pretrain_encoder.py",
                 "--config", path, "--deepspeed_config", ROOT / "ds_configs" / "zero0.json", "--out", out, *extra])


def _losses(run) -> dict[int, float]:
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "grad_norm" in r}


@pytest.fixture(scope="module")
def demo_shards(tokenizer, tmp_path_factory):
    """The demo corpus's monolingual text (whole files) as shards beside the tagged demo tokenizer (`../tokenizer`)."""
    import shutil

    root = tmp_path_factory.mktemp("demo-shards")
    shutil.copytree(tokenizer.saved_dir, root / "tokenizer")
    mono = [(lang, str(DEMO / f"mono/{lang}.txt")) for lang in ("bo", "kk", "ug", "zh")]
    prepare(root / "tokenizer", root / "train", mono=mono, parallel=[], samples_per_shard=1000, max_len=128,
            show_progress=False)
    return root / "train"


@pytest.mark.distributed
def test_mlm_loss_falls_and_the_export_is_an_xlmr_encoder_from_encoder_accepts(demo_shards, tmp_path, tokenizer):
    from transformers import XLMRobertaModel

    from swcm.tokenization import load_tokenizer, tokenizer_fingerprint

    run = tmp_path / "mlm"
    _mlm(tmp_path, demo_shards, run, steps=40, launcher=(DS,))
    losses = _losses(run)
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert first - last > 1.0, (first, last)     # from ~ln(2007) = 7.6: the unigram distribution alone gives > 1

    hf = tmp_path / "hf"
    _run([PY, "launch/convert_checkpoint.py", "to-hf", "--run", run, "--out", hf])
    encoder = XLMRobertaModel.from_pretrained(str(hf))
    saved = torch.load(run / "checkpoints" / "step_00000040" / "mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=True)["module"]   # ZeRO-0: the whole model, DeepSpeed's own file
    assert torch.equal(encoder.embeddings.word_embeddings.weight, saved["roberta.embeddings.word_embeddings.weight"])
    assert torch.equal(encoder.encoder.layer[1].output.dense.weight,
                       saved["roberta.encoder.layer.1.output.dense.weight"])
    assert tokenizer_fingerprint(load_tokenizer(hf)) == tokenizer_fingerprint(tokenizer)

    swcm = tmp_path / "swcm"
    _run([PY, "launch/convert_checkpoint.py", "from-encoder", "--encoder", hf, "--out", swcm])
    config = json.loads((swcm / "config.json").read_text())
    tags = {c: tokenizer.convert_tokens_to_ids(f"<{c}>") for c in ("bo", "kk", "mn", "ug", "zh")}
    assert config["lang_token_ids"] == tags and config["vocab_size"] == len(tokenizer)   # no rows added twice
    assert tokenizer_fingerprint(load_tokenizer(swcm)) == tokenizer_fingerprint(tokenizer)   # the shards still fit
    from safetensors.torch import load_file

    weights = load_file(str(swcm / "model.safetensors"))
    assert torch.equal(weights["encoder.embeddings.word_embeddings.weight"],
                       saved["roberta.embeddings.word_embeddings.weight"])


@pytest.mark.distributed
def test_mlm_resume_reproduces_the_uninterrupted_losses(demo_shards, tmp_path):
    """SIGKILL once a checkpoint exists; --resume continues from it with the same masks, dropout and batches, so
    every step's loss equals the uninterrupted run's."""
    import signal
    import time

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _mlm(tmp_path, demo_shards, whole, ranks=1, steps=16)
    config = tmp_path / "parts.json"
    config.write_text((tmp_path / "whole.json").read_text())
    proc = subprocess.Popen([*SWCM_LAUNCH, "--num_gpus", "1", "--master_port", str(_free_port()),
                             "launch/pretrain_encoder.py", "--config", str(config),
                             "--deepspeed_config", str(ROOT / "ds_configs" / "zero0.json"),
                             "--out", str(parts)], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (parts / "checkpoints" / "step_00000004" / "COMPLETE").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint of step 4"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    saved = [s for s, _ in complete_checkpoints(parts / "checkpoints")]
    assert 4 <= max(saved) < 16, saved
    _mlm(tmp_path, demo_shards, parts, ranks=1, steps=16, extra=["--resume"])
    assert _losses(whole) == _losses(parts) and len(_losses(whole)) == 16


@pytest.mark.distributed
def test_mlm_continues_an_xlmr_without_language_tags(demo_shards, tmp_path, tiny_xlmr_dir):
    from safetensors.torch import load_file

    run = tmp_path / "continued"
    _mlm(tmp_path, demo_shards, run, ranks=1, steps=4, model={"path": str(tiny_xlmr_dir)})
    source = load_file(str(tiny_xlmr_dir / "model.safetensors"))["roberta.embeddings.word_embeddings.weight"]
    init = load_file(str(run / "init_model" / "model.safetensors"))["roberta.embeddings.word_embeddings.weight"]
    rows = source.shape[0]
    assert init.shape[0] == rows + 5
    assert torch.equal(init[:rows], source)
    assert torch.allclose(init[rows:], source.mean(0).expand(5, -1), atol=1e-6)
    _run([PY, "launch/convert_checkpoint.py", "to-hf", "--run", run, "--out", tmp_path / "hf"])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == rows + 5
