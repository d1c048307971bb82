"""Beam search on the dev examples inside a training job: each rank generates a share, every rank gets them all."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from swcm.tasks.generation import generate_batch, length_batches
from swcm.tasks.jsonl import Example
from swcm.tasks.layouts import tags_layout


def generate_on_ranks(model, tokenizer, examples: Sequence[Example], *, num_beams: int, max_new_tokens: int,
                      batch_size: int, max_len: int, synced: bool) -> list[str]:
    """Predictions for `examples` in their order, the same list on every rank (collective). Rank r generates
    examples r, r + W, ...; `synced` (ZeRO-3, where every forward gathers partitioned weights on all ranks) makes
    every rank run as many generate() calls, each with `synced_gpus`, repeating its last batch where it has fewer."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(examples), world))
    own = set(mine)
    lengths = [len(ids) for ids in tokenizer([examples[i].source for i in mine],
                                             add_special_tokens=False)["input_ids"]] if mine else []
    batches = [[mine[j] for j in b] for b in length_batches([examples[i] for i in mine], lengths, batch_size)]
    if synced:
        most = torch.tensor([len(batches)], dtype=torch.float64, device=model.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        batches += [batches[-1] if batches else [0]] * (int(most.item()) - len(batches))
    layout = tags_layout(tokenizer, {code for e in examples for code in (e.src_lang, e.tgt_lang)})
    predictions = {}
    for batch in batches:
        texts = generate_batch(model, layout, [examples[i] for i in batch], num_beams=num_beams,
                               max_new_tokens=max_new_tokens, max_len=max_len, synced_gpus=synced)
        predictions.update(zip(batch, texts))
    shares = [None] * world
    dist.all_gather_object(shares, {i: p for i, p in predictions.items() if i in own})
    merged = {i: p for share in shares for i, p in share.items()}
    return [merged[i] for i in range(len(examples))]
