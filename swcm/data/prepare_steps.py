"""The datatrove steps of one prepare task: read records -> clean and tokenise -> write shards and a task report.

A task of rank r among W takes the records whose number n (1-based, counted across an input's files) has
(n - 1) % W == r: every task reads every input but decodes, parses and tokenises only its own records, so the
tokenising, which is where the time goes, spreads evenly over tasks whatever the number and size of the files,
and the same inputs with the same W give the same samples in the same shards. The records a task does not own are
counted past without being decoded.

Documents flow between the steps as datatrove `Document`s: a record's cleaned text (or the reason it was skipped)
from `ReadRecords`, token ids from `Tokenise`, and, per file read, a count of its records. `WriteShards` is the
only sink: it writes the task's shards (`<stream>-tRRRRR-NNNNNN.tar`), then `tasks/RRRRR.json` (what became of
every input, per file and reason) and `tasks/RRRRR.npz` (per-sample lengths), each under a temporary name and
renamed when complete; datatrove marks the task complete after that, and the merge (`prepare_merge`) reads them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from swcm.atomic_write import write_bytes_atomic
from swcm.data import sources
from swcm.data import text as T
from swcm.data.shard_tar import ShardTar
from swcm.data.shards import DataError, sha256_file

SPECIAL_TOKENS_PER_SAMPLE = 3   # <s> <lang> ... </s> on the encoder side (the decoder side needs 3 as well)
TOKENIZE_CHUNK = 1024           # records per batch-tokenizer call: big enough to amortise the Rust call
TASKS_DIR = "tasks"


@dataclass(frozen=True)
class Input:
    """One input as the user gave it: `mono` (langs (lang,), paths (PATH,)), `aligned` (langs (src, tgt), paths
    (SRC, TGT), line i of one translating line i of the other) or `pairs` (paths (PATH,) of JSONL / Parquet /
    datasets records with src, tgt, src_lang, tgt_lang)."""
    kind: str
    paths: tuple[str, ...]
    langs: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return ",".join(self.paths)


@dataclass(frozen=True)
class Job:
    """What every task needs to know, picklable (datatrove ships it to worker processes and SLURM jobs)."""
    inputs: tuple[Input, ...]
    tokenizer_dir: str
    stage: str
    max_len: int
    samples_per_shard: int
    text_field: str
    fingerprint: str        # the tokenizer's, as the coordinator saw it: a task that loads another one stops

    @property
    def budget(self) -> int:
        return self.max_len - SPECIAL_TOKENS_PER_SAMPLE


def task_files(stage: str | Path, rank: int) -> tuple[Path, Path]:
    """The report and lengths files task `rank` leaves in the stage directory."""
    d = Path(stage) / TASKS_DIR
    return d / f"{rank:05d}.json", d / f"{rank:05d}.npz"


def _doc(input_no: int, record: int, **meta) -> Document:
    return Document(text="", id=f"{input_no}:{record}", metadata={"input": input_no, **meta})


class ReadRecords(PipelineStep):
    """Yields, in input order, one Document per record this task owns: `metadata` holds `input`, `file`, `line`,
    `stream` and either `text` (+ `tgt` for a pair) or `skip` (the reason), then, after each file, a Document
    with `records` (the file's record count, for the report)."""
    name = "read records"
    type = "swcm reader"

    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def run(self, data, rank: int = 0, world_size: int = 1):
        for k, inp in enumerate(self.job.inputs):
            if inp.kind == "aligned":
                yield from self._aligned(k, inp, rank, world_size)
                continue
            base = 0   # records of this input in the files before this one
            for src in sources.resolve(inp.paths[0]):
                def owned(line: int, base: int = base) -> bool:
                    return (base + line - 1) % world_size == rank

                gen = (sources.text_records(src, self.job.text_field, owned) if inp.kind == "mono"
                       else sources.pair_records(src, owned))
                count = yield from self._records(k, inp, src, base, gen)
                yield _doc(k, 0, file=src.path, records=count)
                base += count

    def _records(self, k: int, inp: Input, src: sources.Source, base: int, gen):
        while True:
            try:
                line, value, reason = next(gen)
            except StopIteration as stop:
                return stop.value
            meta = {"file": src.path, "line": line}
            if inp.kind == "mono":
                if reason is None:
                    text, reason = T.clean_line(value) if isinstance(value, bytes) else T.clean_text(value)
                meta.update(stream=f"mono/{inp.langs[0]}", lang=inp.langs[0])
                if reason:
                    meta.update(skip=reason)
                else:
                    meta.update(text=text)
            elif reason:
                meta.update(skip=reason)
            else:
                (s, s_reason), (t, t_reason) = T.clean_text(value["src"]), T.clean_text(value["tgt"])
                meta.update(stream=f"parallel/{value['src_lang']}-{value['tgt_lang']}", src_lang=value["src_lang"],
                            tgt_lang=value["tgt_lang"], text=s, tgt=t, src_file=src.path, tgt_file=src.path,
                            src_skip=s_reason, tgt_skip=t_reason)
            self.stat_update("records")
            yield _doc(k, base + line, **meta)

    def _aligned(self, k: int, inp: Input, rank: int, world_size: int):
        """Line i of the SRC files with line i of the TGT files (each side's files in sorted order)."""
        sides = []
        for path in inp.paths:
            srcs = sources.resolve(path)
            for s in srcs:
                if s.kind != "text":
                    raise DataError(f"{s.path}: aligned parallel files must be plain text, one sentence per line "
                                    f"(JSONL or Parquet pairs go to --parallel-jsonl)")
            sides.append(_side_lines(srcs))
        counts = [0, 0]
        stream = f"parallel/{inp.langs[0]}-{inp.langs[1]}"
        for (file_a, a), (file_b, b) in _zip_sides(sides, counts, inp):
            n = counts[0]
            if (n - 1) % world_size != rank:
                continue
            (s, s_reason), (t, t_reason) = T.clean_line(a), T.clean_line(b)
            yield _doc(k, n, stream=stream, src_lang=inp.langs[0], tgt_lang=inp.langs[1], text=s, tgt=t,
                       src_file=file_a, tgt_file=file_b, src_skip=s_reason, tgt_skip=t_reason, line=n)
        for path, n in zip(inp.paths, counts):
            yield _doc(k, 0, file=path, records=n)


def _side_lines(srcs: list[sources.Source]):
    for s in srcs:
        for _, raw in sources.raw_lines(s):
            yield s.path, raw


def _zip_sides(sides, counts: list[int], inp: Input):
    """Pairs of lines of the two sides, counting each side's lines in `counts`; DataError (with both counts) if
    one side ends before the other."""
    a_side, b_side = sides
    for a in a_side:
        counts[0] += 1
        b = next(b_side, None)
        if b is None:
            counts[0] += sum(1 for _ in a_side)
            break
        counts[1] += 1
        yield a, b
    counts[1] += sum(1 for _ in b_side)
    if counts[0] != counts[1]:
        raise DataError(f"misaligned parallel files: {inp.paths[0]} has {counts[0]} lines, {inp.paths[1]} has "
                        f"{counts[1]} lines (line i of one must translate line i of the other)")


class Tokenise(PipelineStep):
    """Tokenises the records' text with the model's tokenizer (no special tokens), TOKENIZE_CHUNK at a time.
    A monolingual record becomes one sample per piece (`text.split_into_pieces` at sentence ends within
    max_len - 3 tokens); a pair becomes one sample, or a skip when a side is bad or longer than that. Records
    whose tokens include a special id other than <unk> (literal "<mask>" text) are skipped. Samples carry
    `ids` (mono, as `pieces`) or `src_ids` + `tgt_ids`, and `langs`: {lang: (<unk> tokens, tokens)}."""
    name = "tokenise"
    type = "swcm tokenizer"

    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def run(self, data, rank: int = 0, world_size: int = 1):
        from swcm.tokenization import load_tokenizer, tokenizer_fingerprint

        self.tok = load_tokenizer(self.job.tokenizer_dir)
        if tokenizer_fingerprint(self.tok) != self.job.fingerprint:
            raise DataError(f"--tokenizer {self.job.tokenizer_dir}: changed while the shard set was being prepared "
                            f"(fingerprint {tokenizer_fingerprint(self.tok)}, the run started with "
                            f"{self.job.fingerprint})")
        # Text that tokenises to a special id (a literal "<mask>" or "<s>") would smuggle control tokens into the
        # model's input; <unk> is the one special that stands for real text.
        self.forbidden = frozenset(self.tok.all_special_ids) - {self.tok.unk_token_id}
        chunk: list[Document] = []
        for doc in data:
            m = doc.metadata
            if "text" not in m or m.get("src_skip") or m.get("tgt_skip"):
                yield doc
                continue
            if chunk and ("tgt" in m) != ("tgt" in chunk[0].metadata):   # a chunk is all mono or all pairs
                yield from self._chunk(chunk)
                chunk = []
            chunk.append(doc)
            if len(chunk) == TOKENIZE_CHUNK:
                yield from self._chunk(chunk)
                chunk = []
        yield from self._chunk(chunk)

    def _encode(self, texts: list[str], offsets: bool):
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=offsets, split_special_tokens=True)
        return enc["input_ids"], enc["offset_mapping"] if offsets else [None] * len(texts)

    def _problem(self, ids: list[int]) -> str | None:
        if not ids:
            return T.EMPTY
        if not self.forbidden.isdisjoint(ids):
            return T.SPECIAL_TOKEN_TEXT
        return None

    def _chunk(self, chunk: list[Document]):
        if not chunk:
            return
        unk = self.tok.unk_token_id
        if "tgt" not in chunk[0].metadata:
            texts = [d.metadata["text"] for d in chunk]
            ids_list, _ = self._encode(texts, offsets=False)
            # Only a record longer than the budget is split, and only its split needs the tokens' character spans
            # (sentence ends): asking for them, and scanning them, for every record added 8% to the tokenising of the
            # demo's Tibetan.
            long = [i for i, ids in enumerate(ids_list) if len(ids) > self.job.budget]
            offsets_of = dict(zip(long, self._encode([texts[i] for i in long], offsets=True)[1])) if long else {}
            for i, (doc, ids) in enumerate(zip(chunk, ids_list)):
                problem = self._problem(ids)
                if problem:
                    doc.metadata.update(skip=problem)
                    yield doc
                    continue
                pieces = ([(0, len(ids))] if i not in offsets_of else
                          T.split_into_pieces(len(ids), T.sentence_cut_points(texts[i], offsets_of[i]),
                                              self.job.budget))
                doc.metadata.update(pieces=[ids[a:b] for a, b in pieces], tokens=len(ids),
                                    langs={doc.metadata["lang"]: (ids.count(unk), len(ids))})
                self.stat_update("tokens", value=len(ids))
                yield doc
            return
        src_ids, _ = self._encode([d.metadata["text"] for d in chunk], offsets=False)
        tgt_ids, _ = self._encode([d.metadata["tgt"] for d in chunk], offsets=False)
        for doc, s_ids, t_ids in zip(chunk, src_ids, tgt_ids):
            m = doc.metadata
            problems = [(f, p) for f, p in ((m["src_file"], self._problem(s_ids)),
                                            (m["tgt_file"], self._problem(t_ids))) if p]
            problems += [(f, T.TOO_LONG_PAIR) for f, ids in ((m["src_file"], s_ids), (m["tgt_file"], t_ids))
                         if len(ids) > self.job.budget]
            if problems:
                m.update(skips=problems)
            else:
                langs: dict[str, tuple[int, int]] = {}
                for lang, ids in ((m["src_lang"], s_ids), (m["tgt_lang"], t_ids)):
                    u, n = langs.get(lang, (0, 0))
                    langs[lang] = (u + ids.count(unk), n + len(ids))
                m.update(src_ids=s_ids, tgt_ids=t_ids, tokens=len(s_ids) + len(t_ids), langs=langs)
                self.stat_update("tokens", value=len(s_ids) + len(t_ids))
            yield doc


class StreamShardWriter:
    """Writes the samples of one stream of one task into tar shards of at most `samples_per_shard` samples, each
    written under a temporary name and renamed when complete; records per-shard counts, sha256 and lengths."""

    def __init__(self, out_dir: Path, stream: str, rank: int, samples_per_shard: int):
        self.out_dir, self.stream, self.samples_per_shard = out_dir, stream, samples_per_shard
        self.prefix = f"{stream.replace('/', '-')}-t{rank:05d}"
        self.shards: dict[str, dict] = {}
        self.lengths: dict[str, np.ndarray] = {}
        self._writer = None
        self._name = None
        self._count = 0
        self._tokens = 0
        self._lens: list = []

    def _open(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{self._name}.tmp"
        # Plain ustar with fixed metadata: no per-member PAX header (half the headers a reader parses) and
        # byte-identical shards, hence the same sha256, from the same input.
        self._writer = ShardTar(self._tmp)
        self._count, self._tokens, self._lens = 0, 0, []

    def write(self, meta: dict, arrays: dict[str, list[int]]) -> None:
        """Append one sample: `meta` (JSON) and token arrays by field name (`ids` or `src` + `tgt`)."""
        if self._writer is None:
            self._open()
        key = f"{self._count:08d}"
        members = {"meta.json": json.dumps(meta, ensure_ascii=False).encode()}
        for field, ids in arrays.items():
            members[f"{field}.i32"] = np.asarray(ids, dtype="<i4").tobytes()
        for ext in sorted(members):   # a sample's members in name order, as webdataset writes them
            self._writer.add(f"{key}.{ext}", members[ext])
        lens = [len(a) for a in arrays.values()]
        self._lens.append(lens[0] if len(lens) == 1 else lens)
        self._tokens += sum(lens)
        self._count += 1
        if self._count == self.samples_per_shard:
            self.close()

    def close(self) -> None:
        """Finish the open shard (if any): close the tar, hash it, rename it to its final name."""
        if self._writer is None:
            return
        self._writer.close()
        final = self.out_dir / self._name
        self._tmp.replace(final)
        self.shards[self._name] = {"stream": self.stream, "samples": self._count, "tokens": self._tokens,
                                   "bytes": final.stat().st_size, "sha256": sha256_file(final)}
        self.lengths[self._name] = np.asarray(self._lens, dtype=np.int32)
        self._writer = None

    def abort(self) -> None:
        """Close and remove the open shard (if any) when the task fails: nothing half-written stays, and no tar
        object is left for the garbage collector to flush into a directory that may be gone by then."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        finally:
            self._writer = None
            self._tmp.unlink(missing_ok=True)


def _input_report(inp: Input) -> dict:
    return {"input": inp.label, "kind": inp.kind, "records": {}, "used_lines": 0, "samples": 0, "split_lines": 0,
            "skipped": {}, "streams": {}, "langs": {}}


class WriteShards(PipelineStep):
    """Writes the task's samples into shards (one writer per stream) and, when all are written, the task's
    report and lengths (see the module docstring)."""
    name = "write shards"
    type = "swcm writer"

    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def _clear_previous_attempt(self, stage: Path, rank: int) -> None:
        """A task that ran before and was killed may have left shards; its rerun starts from nothing."""
        for p in (*stage.glob(f"*-t{rank:05d}-*.tar"), *stage.glob(f".*-t{rank:05d}-*.tar.tmp"),
                  *task_files(stage, rank)):
            p.unlink(missing_ok=True)

    def run(self, data, rank: int = 0, world_size: int = 1) -> None:
        """Consume the documents (a plain function, not a generator: datatrove calls it and it runs to the end)."""
        stage = Path(self.job.stage)
        self._clear_previous_attempt(stage, rank)
        writers: dict[str, StreamShardWriter] = {}
        reports = [_input_report(inp) for inp in self.job.inputs]
        try:
            self._write(data, rank, writers, reports)
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        shards, lengths = {}, {}
        for stream in sorted(writers):
            writers[stream].close()
            shards.update(writers[stream].shards)
            lengths.update(writers[stream].lengths)
        report_path, lengths_path = task_files(stage, rank)
        report_path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **{Path(name).stem: arr for name, arr in lengths.items()})
        write_bytes_atomic(lengths_path, buf.getvalue())
        report = {"rank": rank, "world_size": world_size, "inputs": reports, "shards": shards}
        write_bytes_atomic(report_path, json.dumps(report, ensure_ascii=False).encode())


    def _write(self, data, rank: int, writers: dict, reports: list[dict]) -> None:
        stage = Path(self.job.stage)
        for doc in data:
            m = doc.metadata
            rep = reports[m["input"]]
            if "records" in m:
                rep["records"][m["file"]] = m["records"]
                continue
            skips = m.get("skips") or [(f, r) for f, r in ((m.get("src_file"), m.get("src_skip")),
                                                           (m.get("tgt_file"), m.get("tgt_skip"))) if r]
            if m.get("skip"):
                skips = [(m["file"], m["skip"])]
            if skips:
                for f, reason in skips:
                    per_file = rep["skipped"].setdefault(f, {})
                    per_file[reason] = per_file.get(reason, 0) + 1
                    self.stat_update(f"skipped_{reason}")
                continue
            stream = m["stream"]
            if stream not in writers:
                writers[stream] = StreamShardWriter(stage, stream, rank, self.job.samples_per_shard)
            st = rep["streams"].setdefault(stream, {"samples": 0, "tokens": 0})
            if "pieces" in m:
                pieces = m["pieces"]
                for i, ids in enumerate(pieces):
                    sid = doc.id + (f":{i}" if len(pieces) > 1 else "")
                    writers[stream].write({"id": sid, "task": "mono", "lang": m["lang"]}, {"ids": ids})
                rep["split_lines"] += len(pieces) > 1
                n = len(pieces)
            else:
                writers[stream].write({"id": doc.id, "task": "parallel", "src_lang": m["src_lang"],
                                       "tgt_lang": m["tgt_lang"]}, {"src": m["src_ids"], "tgt": m["tgt_ids"]})
                n = 1
            rep["used_lines"] += 1
            rep["samples"] += n
            st["samples"] += n
            st["tokens"] += m["tokens"]
            for lang, (u, t) in m["langs"].items():
                c = rep["langs"].setdefault(lang, {"tokens": 0, "unk": 0})
                c["tokens"] += t
                c["unk"] += u
