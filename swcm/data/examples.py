"""Fine-tuning batches from task examples (JSONL), in one global order that does not depend on the number of ranks.

Every rank computes the same list of global batches for an epoch from the examples, the settings, the seed and the
epoch number alone:
1. per train source, its kept examples: a seeded choice of `cap` of them (all if 0), the same for the whole run
   (a few-shot set stays the same few shots), read round(weight x kept) times per epoch: whole passes, then a
   seeded sample for the fraction;
2. the epoch's reads shuffled (seeded by the epoch), then in windows of max_samples x bucket_batches bucketed by
   direction and length into token-budget batches (`batching.cut_batches`), batch order shuffled in each window.
Rank r of W reads global batches p + r, p + r + W, ... from the position p; past the end it gets filler batches.
The state is the position, (epoch, global batches consumed): resumed on W' ranks the run continues at the same
global batch, so no example is lost or read twice. The dev split: every example once, in file order, unshuffled.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np

from swcm.data.batching import collate, cut_batches, filler_batch, to_tensors
from swcm.data.plan import rng
from swcm.seq2seq_layout import DECODER_SPECIALS, ENCODER_SPECIALS, encoder_ids
from swcm.tokenization import lang_tag

log = logging.getLogger(__name__)

STATE_FORMAT, STATE_VERSION = "swcm-examples-state", 1
KEEP, DRAW, SHUFFLE, ORDER = 11, 12, 13, 14   # purpose tags of the seeded draws (see plan.rng)


@dataclass
class Batching:
    """What decides the batches besides the examples (part of the state, checked on resume)."""
    max_len: int             # tokens per side, special tokens included (longer texts are truncated)
    max_tokens: int
    max_samples: int
    pad_to_multiple: int
    bucket_batches: int
    seed: int


@dataclass
class Source:
    """One train file's examples with its cap (0 = all) and weight (reads per kept example per epoch)."""
    name: str
    examples: list
    cap: int = 0
    weight: float = 1.0


class ExampleStream:
    """Token-budget batches of seq2seq examples for rank `rank` of `world_size` (see the module docstring).

    `split="train"` iterates forever, epoch after epoch; `split="dev"` yields one epoch of every example."""

    def __init__(self, sources: Sequence[Source], tokenizer, batching: Batching, *, rank: int, world_size: int,
                 split: str = "train"):
        self.sources, self.cfg, self.rank, self.world, self.split = list(sources), batching, rank, world_size, split
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        body = batching.max_len - ENCODER_SPECIALS
        self.rows = []   # per source, per example: (encoder ids, target ids, target tag, src lang, tgt lang, id)
        for src in self.sources:
            texts = tokenizer([e.source for e in src.examples] + [e.target for e in src.examples],
                              add_special_tokens=False)["input_ids"]
            n = len(src.examples)
            self.rows.append([(encoder_ids(self.bos, _tag(tokenizer, e.src_lang), texts[i][:body], self.eos),
                               np.asarray(texts[n + i][:body]), _tag(tokenizer, e.tgt_lang), e.src_lang, e.tgt_lang,
                               f"{src.name}:{e.line}") for i, e in enumerate(src.examples)])
        self.fingerprint = hashlib.sha256(repr([(s.name, s.cap, s.weight, [r[:3] for r in rows]) for s, rows in
                                                zip(self.sources, self.rows)]).encode()).hexdigest()[:16]
        self._epoch, self._consumed, self._cached = 0, 0, None

    # -- the global plan --------------------------------------------------------------------------------------
    def _reads(self, epoch: int) -> list[tuple[int, int]]:
        """(source, example) of every read of `epoch`, in reading order."""
        if self.split == "dev":
            return [(s, i) for s, rows in enumerate(self.rows) for i in range(len(rows))]
        reads = []
        for s, src in enumerate(self.sources):
            n = len(self.rows[s])
            kept = rng(self.cfg.seed, KEEP, s).permutation(n)[:src.cap or n]
            whole, frac = divmod(int(round(src.weight * len(kept))), len(kept))
            extra = rng(self.cfg.seed, DRAW, epoch, s).choice(kept, size=frac, replace=False)
            reads += [(s, int(i)) for i in np.concatenate([np.tile(kept, whole), extra])]
        order = rng(self.cfg.seed, SHUFFLE, epoch).permutation(len(reads))
        return [reads[i] for i in order]

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The global batches of `epoch` (the same on every rank)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        reads = self._reads(epoch)
        rows = [self.rows[s][i] for s, i in reads]
        directions = {d: k for k, d in enumerate(sorted({(r[3], r[4]) for r in rows}))}
        enc = np.array([len(r[0]) for r in rows], dtype=np.int64)
        dec = np.array([len(r[1]) + DECODER_SPECIALS for r in rows], dtype=np.int64)
        group = np.array([directions[(r[3], r[4])] for r in rows], dtype=np.int64)
        window = self.cfg.max_samples * self.cfg.bucket_batches
        out = []
        for w, a in enumerate(range(0, len(rows), window)):
            cut = cut_batches(enc[a:a + window], dec[a:a + window], group[a:a + window], self.cfg.max_tokens,
                              self.cfg.max_samples, self.cfg.pad_to_multiple)
            if self.split == "train":
                cut = [cut[i] for i in rng(self.cfg.seed, ORDER, epoch, w).permutation(len(cut))]
            out += [[reads[a + int(i)] for i in b] for b in cut]
        self._cached = (epoch, out)
        return out

    # -- iteration --------------------------------------------------------------------------------------------
    def _collate(self, batch: list[tuple[int, int]]) -> dict:
        rows = [self.rows[s][i] for s, i in batch]
        return to_tensors(collate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], bos=self.bos,
                                  eos=self.eos, pad=self.pad, multiple=self.cfg.pad_to_multiple,
                                  task=["seq2seq"] * len(rows), src_lang=[r[3] for r in rows],
                                  tgt_lang=[r[4] for r in rows], sample_id=[r[5] for r in rows]))

    def _epoch_from(self, epoch: int, consumed: int, track: bool) -> Iterator[dict]:
        batches = self.batches(epoch)
        for position in range(consumed, len(batches), self.world):   # every rank runs the same number of rounds
            g = position + self.rank
            batch = self._collate(batches[g]) if g < len(batches) else to_tensors(filler_batch(
                bos=self.bos, eos=self.eos, pad=self.pad, multiple=self.cfg.pad_to_multiple))
            if track:
                done = position + self.world
                self._epoch, self._consumed = (epoch + 1, 0) if done >= len(batches) else (epoch, done)
            yield batch

    def __iter__(self) -> Iterator[dict]:
        """Train: batches from the position on, forever. Dev: one epoch."""
        if self.split == "dev":
            return self.epoch_batches()
        return self._forever()

    def _forever(self) -> Iterator[dict]:
        while True:
            yield from self._epoch_from(self._epoch, self._consumed, track=True)

    def epoch_batches(self) -> Iterator[dict]:
        """Dev: the whole epoch, position untouched. Train: the rest of the current epoch."""
        if self.split == "dev":
            return self._epoch_from(0, 0, track=False)
        return self._epoch_from(self._epoch, self._consumed, track=True)

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The global position (the same on every rank after a whole step) and what decides the plan."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": self._epoch, "consumed": self._consumed,
                "examples": self.fingerprint, "batching": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`, possibly saved at another world size; ValueError if it was made with other
        examples or batch settings (a resume would not continue the same order)."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state: expected {STATE_FORMAT!r} version {STATE_VERSION}, got "
                             f"{state.get('format')!r} version {state.get('version')!r}")
        if state["examples"] != self.fingerprint:
            raise ValueError("loader state: made with other training examples (files, caps, weights or tokenizer)")
        diffs = [f"{k}: state {v!r}, now {getattr(self.cfg, k)!r}" for k, v in state["batching"].items()
                 if getattr(self.cfg, k) != v]
        if diffs:
            raise ValueError("loader state: the batch settings changed (" + "; ".join(diffs) + ")")
        self._epoch, self._consumed = int(state["epoch"]), int(state["consumed"])


def _tag(tokenizer, code: str) -> int:
    return tokenizer.convert_tokens_to_ids(lang_tag(code))
