"""A step's gradient is that of the per-token mean over the whole step: one global batch split as 1 x 4, 2 x 2 and
4 x 1 (ranks x accumulation steps), with micro-batches of very different token counts and a filler batch, gives the
loss and gradients of the whole batch computed at once (fp32, 1e-6 relative), at ZeRO 0, 2 and 3.

The ranks run the trainer's own `train_step` on a real DeepSpeed engine (gloo); the gradients are read at the
accumulation boundary, before the optimizer consumes them."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers_model import PAD, random_xlmr, swcm_from_xlmr, tiny_xlmr_config

from swcm.seq2seq_layout import IGNORE_INDEX, decoder_mask_from_labels, shift_right
from swcm.training.seq2seq_task import Seq2SeqTask

pytestmark = pytest.mark.distributed

STAGES = (0, 2, 3)
# (samples, source length, target length) per micro-batch: 1 x 3 tokens against 6 x 20; the last is a filler.
SHAPES = [(1, 5, 3), (6, 11, 20), (2, 7, 9), (1, 2, 0)]


def _batch(n, src_len, tgt_len, g):
    input_ids = torch.randint(3, 97, (n, src_len), generator=g)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    labels = torch.full((n, max(tgt_len, 2)), IGNORE_INDEX)
    for i in range(n):
        t = max(1, tgt_len - i)   # ragged targets inside the batch
        if tgt_len:
            labels[i, :t] = torch.randint(3, 97, (t,), generator=g)
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(PAD).long(), "labels": labels,
            "decoder_input_ids": shift_right(labels, 0, PAD), "decoder_attention_mask": decoder_mask_from_labels(labels),
            "task": ["dae"] * n, "tgt_lang": ["bo"] * n, "is_padding": tgt_len == 0}


class _FixedTask(Seq2SeqTask):
    """Just the model: the test hands the batches to train_step itself."""

    name = "test"

    def __init__(self, model_dir):
        self.model_dir = model_dir

    def check(self):
        return None

    def model_path(self):
        return self.model_dir

    def build_data(self, tokenizer, rank, world, micro_batch):
        return None, None

    def loss_keys(self, model_config):
        return ["dae"]

    @staticmethod
    def sample_keys(batch):
        return [("dae",)] * len(batch["task"])


def _capture_boundary_grads(engine, store):
    from deepspeed.utils import safe_get_full_grad

    real_step = engine.step

    def step(*args, **kwargs):
        if engine.is_gradient_accumulation_boundary():
            for name, p in engine.module.named_parameters():
                g = safe_get_full_grad(p)
                store[name] = None if g is None else g.detach().clone().float()
        return real_step(*args, **kwargs)

    engine.step = step


def _worker(rank, world, port, model_dir, batches, out_path):
    from swcm.config import RunConfig, TrainConfig
    from swcm.training.trainer import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    gas = len(batches) // world
    mine = batches[rank * gas:(rank + 1) * gas]
    results = {}
    for stage in STAGES:
        cfg = RunConfig(train=TrainConfig(micro_batch_size=1, global_batch_size=len(batches), gloo_piece_mb=0))
        # A run directory per stage: each trainer is its directory's one writer (swcm/training/run_lock.py).
        trainer = Trainer(cfg, f"ds_configs/zero{stage}.json",
                          os.path.join(os.path.dirname(out_path), f"run-zero{stage}"), task=_FixedTask(model_dir))
        trainer.build()
        grads = {}
        _capture_boundary_grads(trainer.engine, grads)
        result = trainer.train_step(mine)
        results[stage] = {"loss": result.loss, "grads": grads, "nonfinite": _nonfinite_step(trainer, mine)}
    if rank == 0:
        torch.save(results, out_path)


def _nonfinite_step(trainer, batches) -> dict:
    """One more step whose loss is NaN on every rank: what the trainer did with it, then a normal step."""
    from deepspeed.utils import safe_get_full_fp32_param

    def weights():   # ZeRO 1-3 hold the fp32 weights in the optimizer (a collective at ZeRO-3); ZeRO-0 in the model
        full = {n: safe_get_full_fp32_param(p) for n, p in trainer.engine.module.named_parameters()}
        return {n: (w if w is not None else p.detach()).clone()
                for (n, w), p in zip(full.items(), trainer.engine.module.parameters())}

    before, lr = weights(), trainer.scheduler.get_last_lr()[0]
    head = trainer.engine.module.lm_head
    real = head.forward
    head.forward = lambda *a, **k: (lambda o: (o[0], o[1] * float("nan"), o[2]))(real(*a, **k))
    skipped = trainer.train_step(batches)
    head.forward = real
    after, lr_after = weights(), trainer.scheduler.get_last_lr()[0]
    normal = trainer.train_step(batches)
    moved = weights()
    return {"applied": skipped.applied, "loss": skipped.loss, "lr_held": lr_after == lr,
            "unchanged": all(torch.equal(before[n], after[n]) for n in before),
            "next_applied": normal.applied, "next_moves": any(not torch.equal(after[n], moved[n]) for n in after)}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pertoken")
    config = tiny_xlmr_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = swcm_from_xlmr(random_xlmr(config), fused_lm_head_ce=False)
    model.save_pretrained(root / "model")
    g = torch.Generator().manual_seed(3)
    return root, model, [_batch(*shape, g) for shape in SHAPES]


def _whole_batch_reference(model, batches):
    """Loss and gradients of every sample at once, padded into one batch, with a plain per-token mean."""
    n = sum(len(b["input_ids"]) for b in batches)
    s = max(b["input_ids"].shape[1] for b in batches)
    t = max(b["labels"].shape[1] for b in batches)
    whole = {"input_ids": torch.full((n, s), PAD), "labels": torch.full((n, t), IGNORE_INDEX)}
    row = 0
    for b in batches:
        k, bs, bt = len(b["input_ids"]), b["input_ids"].shape[1], b["labels"].shape[1]
        whole["input_ids"][row:row + k, :bs] = b["input_ids"]
        whole["labels"][row:row + k, :bt] = b["labels"]
        row += k
    model.train()
    model.zero_grad()
    logits = model(input_ids=whole["input_ids"], attention_mask=whole["input_ids"].ne(PAD).long(),
                   decoder_input_ids=shift_right(whole["labels"], 0, PAD),
                   decoder_attention_mask=decoder_mask_from_labels(whole["labels"])).logits
    loss = F.cross_entropy(logits.flatten(0, 1), whole["labels"].flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("world", [1, 2, pytest.param(4, marks=pytest.mark.extended)])   # 4: more ranks than cores
def test_split_into_ranks_and_micro_batches_changes_nothing(setup, world, tmp_path):
    """The step's loss and gradients equal the whole batch's at once; and a step whose loss is NaN is skipped alike at
    ZeRO 0, 2 and 3: no update, the lr schedule held, the next step applied."""
    root, model, batches = setup
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(world, _free_port(), str(root / "model"), batches, str(out)), nprocs=world, join=True)
    results = torch.load(out, weights_only=True)
    ref_loss, ref_grads = _whole_batch_reference(model, batches)
    for stage in STAGES:
        got = results[stage]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-6), (world, stage)
        assert got["grads"].keys() == ref_grads.keys()
        for name, ref in ref_grads.items():
            err = (got["grads"][name] - ref).abs().max().item()
            assert err <= 1e-6 * ref.abs().max().item() + 1e-12, (world, stage, name, err)
        nonfinite = got["nonfinite"]
        assert not nonfinite["applied"] and nonfinite["loss"] != nonfinite["loss"], (world, stage)   # NaN logged
        assert nonfinite["unchanged"] and nonfinite["lr_held"], (world, stage, nonfinite)
        assert nonfinite["next_applied"] and nonfinite["next_moves"], (world, stage, nonfinite)


def test_a_micro_batch_mean_would_fail_the_comparison(setup):
    """The comparison above can fail: averaging micro-batch means (DeepSpeed's default) gives another gradient."""
    _, model, batches = setup
    _, ref_grads = _whole_batch_reference(model, batches)
    model.zero_grad()
    for b in batches[:3]:
        out = model(**{k: b[k] for k in ("input_ids", "attention_mask", "decoder_input_ids",
                                          "decoder_attention_mask", "labels")})
        (out.loss / 3).backward()
    name = "encoder.embeddings.word_embeddings.weight"
    assert (model.get_parameter(name).grad - ref_grads[name]).abs().max() > 1e-3 * ref_grads[name].abs().max()
