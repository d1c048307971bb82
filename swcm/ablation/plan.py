"""The stages of the ablation in miniature, from one `AblationConfig` into one output directory OUT.

    corpus      data/demo cut to the configured size: text files, fine-tuning and dev JSONL (zh -> bo/kk/mn/ug)
    tokenizer   launch/make_tokenizer.py: sentencepiece on the monolingual text, plus the language tags
    shards      launch/prepare_data.py: monolingual + NTREX zh<->x train pairs
    encoder     launch/pretrain_encoder.py: masked-LM pretraining of the encoder every row starts from
    encoder-hf  convert_checkpoint.py to-hf: the encoder as an XLM-R directory
    per row and seed (rows/<row>/seed<k>/):
      init      convert_checkpoint.py from-encoder with the row's decoder (SWCM rows)
      pretrain  launch/pretrain.py (SWCM) or the warm start's pretraining: the row's objectives, the shared budget
      finetune  launch/finetune.py (SWCM) or the warm start's: NTREX train zh->x, the shared budget
      predict   launch/evaluate.py --model on the dev pairs: held-out NLL, beam search, scores (every row alike)
    rows/<row>/compare   launch/evaluate.py --compare: paired bootstrap against the baseline row, seed k with seed k
    report      results.md, results.csv, runs.csv, results.png

Every command runs in OUT and names paths relative to it, so an output directory can be moved or copied whole.
Seed k sets a row's random initialisation, its pretraining and fine-tuning data order and its dropout; every row's
seed k shares them with every other row's seed k.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from swcm.ablation.config import AblationConfig, RowConfig
from swcm.ablation.runner import Command, Stage
from swcm.atomic_write import write_atomic

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
NTREX = "parallel/ntrex128/ntrex128"
MONO = {"bo": ["mono/bo.txt", "mono/bo_speech.txt"], "kk": ["mono/kk.txt"],
        "ug": ["mono/ug.txt", "mono/ug_proverbs.txt"], "zh": ["mono/zh.txt"],
        "mn": [f"{NTREX}.train.mn"]}    # as the demo: Mongolian exists as parallel text only
TARGETS = ("bo", "kk", "mn", "ug")
PIVOT = "zh"
# The tokenizer sees all the text the ablation trains on: the monolingual files and both sides of the train pairs.
TOKENIZER_TEXT = sorted({f for fs in MONO.values() for f in fs}
                        | {f"{NTREX}.train.{lang}" for lang in (PIVOT, *TARGETS)})
FINETUNE_TRAIN, DEV = "corpus/finetune.train.jsonl", "corpus/dev.jsonl"
MT_RATIO = {"dae": 0.0, "mt": 1.0}   # "dae+mt": the configured pretrain.mt_ratio


def _script(name: str) -> str:
    return str(REPO / "launch" / name)


def _ds(stage: int = 0) -> str:
    return str(REPO / "ds_configs" / f"zero{stage}.json")


@dataclass(frozen=True)
class RunDirs:
    """Where one seed of one row lives, relative to OUT."""
    row: RowConfig
    seed: int

    @property
    def base(self) -> str:
        return f"rows/{self.row.id}/seed{self.seed}"

    @property
    def init(self) -> str:
        return f"{self.base}/init"

    @property
    def pretrain(self) -> str:
        return f"{self.base}/pretrain"

    @property
    def finetune(self) -> str:
        return f"{self.base}/finetune"

    @property
    def predictions(self) -> str:
        return f"{self.base}/predictions.jsonl"

    @property
    def scores(self) -> str:
        return f"{self.base}/scores.json"

    def stage(self, name: str) -> str:
        return f"{self.base}/{name}"


def mt_ratio(cfg: AblationConfig, row: RowConfig) -> float:
    """The MT share of a row's pretraining samples."""
    return MT_RATIO.get(row.objectives, cfg.pretrain.mt_ratio)


def compare_dir(row: RowConfig) -> str:
    return f"rows/{row.id}/compare"


def paired_seeds(cfg: AblationConfig, row: RowConfig) -> list[int]:
    """The seeds of `row` compared with the baseline's same seeds."""
    base = cfg.baseline_row()
    return list(range(1, min(row.seeds, base.seeds) + 1))


# ------------------------------------------------------------------------------------------------ run configs


def _save_every(steps: int) -> int:
    return max(1, math.ceil(steps / 4))   # a kill loses at most a quarter of a stage


def _train(stage, seed: int) -> dict:
    return {"max_steps": stage.max_steps, "lr": stage.lr, "warmup_ratio": stage.warmup_ratio,
            "micro_batch_size": stage.micro_batch_size, "seed": seed, "log_every": 10,
            "save_every": _save_every(stage.max_steps), "keep_last": 1, "dev_every": 0}


def encoder_config(cfg: AblationConfig) -> dict:
    e = cfg.encoder
    return {"model": {"tokenizer": "tokenizer", "hidden_size": e.hidden_size, "num_hidden_layers": e.num_hidden_layers,
                      "num_attention_heads": e.num_attention_heads, "intermediate_size": e.intermediate_size,
                      "attn_implementation": "sdpa"},
            "data": {"shards": "shards/train", "max_tokens": e.max_tokens, "num_workers": 0},
            "train": {"max_steps": e.max_steps, "lr": e.lr, "warmup_ratio": 0.1, "micro_batch_size": e.micro_batch_size,
                      "log_every": 10, "save_every": _save_every(e.max_steps), "keep_last": 1, "dev_every": 0}}


def pretrain_config(cfg: AblationConfig, run: RunDirs) -> dict:
    model = run.init if run.row.model == "swcm" else "encoder/hf"
    return {"model": {"path": model, "attn_implementation": "sdpa"},
            "data": {"shards": "shards/train", "mt_ratio": mt_ratio(cfg, run.row),
                     "max_tokens": cfg.pretrain.max_tokens, "num_workers": 0, "seed": run.seed},
            "train": _train(cfg.pretrain, run.seed)}


def finetune_config(cfg: AblationConfig, run: RunDirs) -> dict:
    if run.row.model == "swcm":
        model = {"init_run": run.pretrain}
    else:
        model = {"path": f"{run.pretrain}/hf" if run.row.objectives != "none" else "encoder/hf"}
    return {"model": {**model, "attn_implementation": "sdpa"},
            "data": {"train": FINETUNE_TRAIN, "max_len": cfg.corpus.max_len, "max_tokens": cfg.finetune.max_tokens,
                     "seed": run.seed},
            "train": _train(cfg.finetune, run.seed),
            "eval": {"metric": "loss"}}


def _write_config(path: str, config: dict, out: Path):
    def write():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out / path, json.dumps(config, indent=1) + "\n")
    return write


# ------------------------------------------------------------------------------------------------ stages


def _cut(src: Path, dst: Path, max_lines: int) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dst, "".join(lines[:max_lines or None]))


def write_corpus(cfg: AblationConfig, out: Path) -> None:
    """OUT/corpus: the demo files cut to `corpus.max_lines` lines, the fine-tuning pairs (zh -> each target, from the
    NTREX train split) and the dev pairs (the first `corpus.dev_examples` of the NTREX dev split per target)."""
    from swcm.tasks.sources import parallel_records, records_text

    c = cfg.corpus
    files = {f for fs in MONO.values() for f in fs} | set(TOKENIZER_TEXT) | {
        f"{NTREX}.{split}.{lang}" for split in ("train", "dev") for lang in (PIVOT, *TARGETS)}
    for f in sorted(files):
        _cut(DEMO / f, out / "corpus" / f, c.max_lines if ".dev." not in f else 0)
    train, dev = [], []
    for lang in TARGETS:
        train += parallel_records(out / "corpus" / f"{NTREX}.train.{PIVOT}", out / "corpus" / f"{NTREX}.train.{lang}",
                                  PIVOT, lang)
        dev += parallel_records(out / "corpus" / f"{NTREX}.dev.{PIVOT}", out / "corpus" / f"{NTREX}.dev.{lang}", PIVOT,
                                lang)[:c.dev_examples or None]
    write_atomic(out / FINETUNE_TRAIN, records_text(train))
    write_atomic(out / DEV, records_text(dev))


def data_stages(cfg: AblationConfig, out: Path) -> list[Stage]:
    c, corpus = cfg.corpus, lambda f: f"corpus/{f}"
    mono = [arg for lang, fs in MONO.items() for arg in ("--mono", f"{lang}={','.join(corpus(f) for f in fs)}")]
    parallel = [arg for lang in TARGETS for arg in
                ("--parallel", f"{PIVOT}-{lang}={corpus(f'{NTREX}.train.{PIVOT}')},{corpus(f'{NTREX}.train.{lang}')}")]
    return [
        Stage("corpus", outputs=[out / FINETUNE_TRAIN, out / DEV], prepare=lambda: write_corpus(cfg, out)),
        Stage("tokenizer", ["corpus"], [Command([_script("make_tokenizer.py"), "--text", *map(corpus, TOKENIZER_TEXT),
                                                 "--vocab-size", str(c.vocab_size), "--max-sentences",
                                                 str(c.tokenizer_sentences), "--out", "tokenizer"])],
              outputs=[out / "tokenizer" / "tokenizer_config.json"]),
        Stage("shards", ["tokenizer"], [Command([_script("prepare_data.py"), "--tokenizer", "tokenizer", "--out",
                                                 "shards/train", "--max-len", str(c.max_len), "--workers", "1",
                                                 "--overwrite", *mono, *parallel])],
              outputs=[out / "shards" / "train" / "index.json"]),
        Stage("encoder", ["shards"], [Command([_script("pretrain_encoder.py"), "--config", "encoder/mlm.json",
                                               "--deepspeed_config", _ds(), "--out", "encoder/run", "--resume"],
                                              ranks=cfg.encoder.ranks)],
              outputs=[out / "encoder" / "run" / "checkpoints" / f"step_{cfg.encoder.max_steps:08d}" / "COMPLETE"],
              prepare=_write_config("encoder/mlm.json", encoder_config(cfg), out)),
        Stage("encoder-hf", ["encoder"], [Command([_script("convert_checkpoint.py"), "to-hf", "--run", "encoder/run",
                                                   "--out", "encoder/hf", "--overwrite"])],
              outputs=[out / "encoder" / "hf" / "model.safetensors"]),
    ]


def run_stages(cfg: AblationConfig, out: Path, run: RunDirs) -> list[Stage]:
    """init (SWCM) -> pretrain (unless the row has none) -> finetune -> predict, for one seed of one row."""
    row = run.row
    swcm = row.model == "swcm"
    stages, last = [], "encoder-hf"
    if swcm:
        stages.append(Stage(run.stage("init"), [last], [Command([
            _script("convert_checkpoint.py"), "from-encoder", "--encoder", "encoder/hf", "--out", run.init,
            "--normal-layer-every", str(row.normal_layer_every), "--decoder-init", row.decoder_init,
            "--seed", str(run.seed), "--overwrite"])], outputs=[out / run.init / "config.json"]))
        last = run.stage("init")
    trainer = [_script("pretrain.py")] if swcm else ["-m", "swcm.ablation.warm_start", "pretrain"]
    if row.objectives != "none":
        stages.append(Stage(run.stage("pretrain"), [last], [Command([
            *trainer, "--config", f"{run.base}/pretrain.json", "--deepspeed_config", _ds(), "--out", run.pretrain,
            "--resume"], ranks=cfg.pretrain.ranks)],
            outputs=[out / run.pretrain / "checkpoints" / f"step_{cfg.pretrain.max_steps:08d}" / "COMPLETE",
                     *([] if swcm else [out / run.pretrain / "hf" / "config.json"])],
            prepare=_write_config(f"{run.base}/pretrain.json", pretrain_config(cfg, run), out)))
        last = run.stage("pretrain")
    trainer = [_script("finetune.py")] if swcm else ["-m", "swcm.ablation.warm_start", "finetune"]
    stages.append(Stage(run.stage("finetune"), [last], [Command([
        *trainer, "--config", f"{run.base}/finetune.json", "--deepspeed_config", _ds(), "--out", run.finetune,
        "--resume"], ranks=cfg.finetune.ranks)],
        outputs=[out / run.finetune / "checkpoints" / f"step_{cfg.finetune.max_steps:08d}" / "COMPLETE",
                 out / run.finetune / "hf" / "config.json", out / run.finetune / "best.json"],
        prepare=_write_config(f"{run.base}/finetune.json", finetune_config(cfg, run), out)))
    e = cfg.eval
    # Every row, SWCM or warm start, is scored by the same code: evaluate.py on its exported directory.
    predict = [Command([_script("evaluate.py"), "--model", f"{run.finetune}/hf", "--data", DEV, "--out",
                        run.predictions, "--scores-out", run.scores, "--device", "cpu", "--beam", str(e.beam),
                        "--max-new-tokens", str(e.max_new_tokens), "--batch-size", str(e.batch_size),
                        "--max-len", str(cfg.corpus.max_len)])]
    stages.append(Stage(run.stage("predict"), [run.stage("finetune")], predict,
                        outputs=[out / run.predictions, out / run.scores]))
    return stages


def write_pooled(cfg: AblationConfig, out: Path, row: RowConfig) -> None:
    """compare/row.jsonl and compare/baseline.jsonl: the paired seeds' predictions, seed after seed."""
    base = cfg.baseline_row()
    (out / compare_dir(row)).mkdir(parents=True, exist_ok=True)
    for name, source in (("row", row), ("baseline", base)):
        text = "".join((out / RunDirs(source, k).predictions).read_text(encoding="utf-8")
                       for k in paired_seeds(cfg, row))
        write_atomic(out / compare_dir(row) / f"{name}.jsonl", text)


def compare_stage(cfg: AblationConfig, out: Path, row: RowConfig) -> Stage:
    base = cfg.baseline_row()
    seeds = paired_seeds(cfg, row)
    d = compare_dir(row)
    deps = [RunDirs(r, k).stage("predict") for r in (row, base) for k in seeds]
    return Stage(f"{d}", deps, [Command([_script("evaluate.py"), "--predictions", f"{d}/row.jsonl", "--compare",
                                         f"{d}/baseline.jsonl", "--scores-out", f"{d}/compare.json"])],
                 outputs=[out / d / "compare.json"], prepare=lambda: write_pooled(cfg, out, row))


def all_runs(cfg: AblationConfig) -> list[RunDirs]:
    """Every (row, seed), seed-major: every row's seed 1 comes before any row's seed 2."""
    return [RunDirs(row, k) for k in range(1, max(r.seeds for r in cfg.rows) + 1) for row in cfg.rows if k <= row.seeds]


def stages(cfg: AblationConfig, out: Path, report) -> list[Stage]:
    """Every stage in an order that puts each after its dependencies; `report()` writes the tables and the plot."""
    out = Path(out)
    plan = data_stages(cfg, out)
    for run in all_runs(cfg):
        plan += run_stages(cfg, out, run)
    compares = [compare_stage(cfg, out, row) for row in cfg.rows if row.id != cfg.baseline]
    plan += compares
    predicts = [run.stage("predict") for run in all_runs(cfg)]
    plan.append(Stage("report", predicts + [s.id for s in compares],
                      outputs=[out / "results.md", out / "results.csv", out / "runs.csv", out / "results.png"],
                      prepare=report))
    return plan
