#!/usr/bin/env python
"""Write task JSONL (what launch/finetune.py and launch/evaluate.py read) from other layouts.

    python launch/make_task_jsonl.py parallel --src A.zh --tgt A.bo --src-lang zh --tgt-lang bo --out zh_bo.jsonl
    python launch/make_task_jsonl.py squad --input kazqad.jsonl --lang kk --out kk_mrc.jsonl [--limit N]

`parallel`: aligned text files, one segment a line -> {"source", "target", "src_lang", "tgt_lang"} (add
--both-directions for the reverse pairs too). `squad`: SQuAD-style JSONL (question, context, answers.text) ->
{"question", "context", "answer", "lang"}.
"""

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    par = sub.add_parser("parallel", help="aligned text files -> seq2seq lines")
    par.add_argument("--src", required=True)
    par.add_argument("--tgt", required=True)
    par.add_argument("--src-lang", required=True)
    par.add_argument("--tgt-lang", required=True)
    par.add_argument("--both-directions", action="store_true", help="also write target -> source")
    squad = sub.add_parser("squad", help="SQuAD-style reading comprehension -> MRC lines")
    squad.add_argument("--input", required=True)
    squad.add_argument("--lang", required=True)
    for s in (par, squad):
        s.add_argument("--out", required=True)
        s.add_argument("--limit", type=int, default=0, help="keep the first N records (0 = all)")
    args = p.parse_args(argv)
    if args.limit < 0:
        print(f"error: --limit {args.limit}: expected the number of records to keep (0 = all)", file=sys.stderr)
        return 2

    from swcm.atomic_write import write_atomic
    from swcm.output_guard import OutputError, check_output_file
    from swcm.tasks.jsonl import DataError
    from swcm.tasks.sources import parallel_records, records_text, squad_records

    try:
        check_output_file(args.out, [args.src, args.tgt] if args.mode == "parallel" else [args.input], flag="--out")
        if args.mode == "parallel":
            records = parallel_records(args.src, args.tgt, args.src_lang, args.tgt_lang)
            if args.both_directions:
                records += parallel_records(args.tgt, args.src, args.tgt_lang, args.src_lang)
        else:
            records = squad_records(args.input, args.lang)
        records = records[:args.limit or None]
        if not records:
            raise DataError(args.src if args.mode == "parallel" else args.input, None, "no records")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, records_text(records))
    except (DataError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
