#!/usr/bin/env python
"""Print what the pretraining loader feeds one rank: one JSON line per sample.

    python launch/inspect_data.py runs/demo/shards/train --config configs/demo.json --rank 0 --world-size 2 \
        --num-workers 2 --batches 20 [--decode] [--state-in s.json] [--state-out s.json] [--set data.alpha=1.0]

Each line: {"epoch", "batch" (its index in the epoch), "sample_id", "task", "lang", "src_lang", "tgt_lang",
"src_ids", "tgt_ids"} (src_ids: the encoder input without padding; tgt_ids: the scored labels, <tgt_lang> y </s>),
plus "src_text" and "tgt_text" with --decode. A filler batch (a rank that ran out of samples) prints {"epoch", "batch",
"is_padding": true}. --epochs E prints exactly E epochs of this rank's samples from the current position (the
first one from --state-in's position to its end); --state-out saves the loader state after the last batch,
--state-in resumes from one. The state is the same on every rank of a layout and loads on any layout: run
each rank of 2 ranks with --state-out, then 1 or 3 ranks (other --world-size / --num-workers) with --state-in
that file, and the rest of the epoch is read once over the new ranks (docs/data.md, Resume). Bad input (a
shard set, state or setting the loader cannot use, a corrupt shard) ends with one `error: ...` line and exit
status 2; a reader that goes away (`| head -1`) ends it quietly with status 141, as SIGPIPE ends `yes | head`.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shard_dir", help="directory with index.json (from launch/prepare_data.py)")
    p.add_argument("--config", default=None, help="run config JSON whose data section to use (default: defaults)")
    p.add_argument("--tokenizer", default=None, help="the model's tokenizer dir (default: the one in index.json)")
    p.add_argument("--split", choices=("train", "dev"), default="train",
                   help="train: mixed, reshuffled each epoch; dev: every sample once, fixed order")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=None, help="override data.num_workers")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--batches", type=int, help="print this many batches")
    what.add_argument("--epochs", type=int, help="print this many whole epochs")
    p.add_argument("--decode", action="store_true", help="add src_text / tgt_text")
    p.add_argument("--state-in", default=None,
                   help="loader state JSON to resume from (any rank's; the layout may differ from its own)")
    p.add_argument("--state-out", default=None, help="write the loader state JSON here at the end")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.alpha=1.0 (repeatable)")
    return p.parse_args(argv)


def _out_of_range(args) -> str | None:
    """The first integer option outside its range, as an error message; None when all are in range."""
    for flag, value, low in (("--batches", args.batches, 1), ("--epochs", args.epochs, 1),
                             ("--world-size", args.world_size, 1), ("--rank", args.rank, 0),
                             ("--num-workers", args.num_workers, 0)):
        if value is not None and value < low:
            return f"{flag} {value}: expected {low} or more"
    if args.rank >= args.world_size:
        return f"--rank {args.rank}: expected less than --world-size {args.world_size}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    bad = _out_of_range(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from swcm.closed_pipe import closed_pipe_status
    from swcm.config import ConfigError, load_config
    from swcm.data.shards import DataError, load_index
    from swcm.data.stream import PretrainStream, load_state, save_state
    from swcm.tokenization import load_tokenizer

    try:
        cfg = load_config(args.config, args.overrides).data
        setattr(cfg, "shards" if args.split == "train" else "dev_shards", args.shard_dir)
        if args.num_workers is not None:
            cfg.num_workers = args.num_workers
        tokenizer_dir = args.tokenizer or load_index(args.shard_dir)["tokenizer"]["path"]
        if not Path(tokenizer_dir).is_dir():
            raise DataError(f"tokenizer directory {tokenizer_dir} not found (pass --tokenizer: the model's)")
        tokenizer = load_tokenizer(tokenizer_dir)
        stream = PretrainStream(cfg, tokenizer, rank=args.rank, world_size=args.world_size, split=args.split)
        if args.state_in:
            load_state(stream, args.state_in)
        batches = _numbered_batches(stream, args)
        try:
            for epoch, position, batch in batches:
                for line in _lines(batch, position, tokenizer, args.decode):
                    print(json.dumps({"epoch": epoch, **line}, ensure_ascii=False))
            sys.stdout.flush()
        finally:
            batches.close()   # ends the loader's worker processes now, whatever ended the loop
        if args.state_out:
            save_state(stream, args.state_out)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return closed_pipe_status()
    return 0


def _numbered_batches(stream, args):
    """(epoch, position in the epoch, batch) for --batches N (from the current position) or --epochs E; closing
    this generator closes the stream's iterator, and with it the loader's workers."""
    count = 0
    for _ in range(1 if args.batches is not None else args.epochs):
        source = iter(stream) if args.batches is not None else stream.epoch_batches()
        try:
            while args.batches is None or count < args.batches:
                # The position before pulling a batch is that batch's place (dev: fixed epoch 0, counted here).
                epoch, position = stream.epoch, stream.batches_done
                batch = next(source, None)
                if batch is None:
                    break
                if args.split == "dev":   # the dev split replays one fixed epoch: number the passes
                    epoch, position = divmod(count, stream.batches_per_epoch())
                yield epoch, position, batch
                count += 1
        finally:
            source.close()


def _lines(batch: dict, position: int, tokenizer, decode: bool):
    from swcm.seq2seq_layout import IGNORE_INDEX

    if batch["is_padding"]:
        yield {"batch": position, "is_padding": True}
        return
    for i, sid in enumerate(batch["sample_id"]):
        src = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        tgt = [t for t in batch["labels"][i].tolist() if t != IGNORE_INDEX]
        line = {"batch": position, "sample_id": sid, "task": batch["task"][i], "lang": batch["src_lang"][i],
                "src_lang": batch["src_lang"][i], "tgt_lang": batch["tgt_lang"][i], "src_ids": src, "tgt_ids": tgt}
        if decode:
            line["src_text"] = tokenizer.decode(src, clean_up_tokenization_spaces=False)
            line["tgt_text"] = tokenizer.decode(tgt, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        yield line


if __name__ == "__main__":
    from swcm.fast_exit import skip_final_gc

    skip_final_gc()
    sys.exit(main())
