"""The ablation's results: one line per run (runs.csv), one per row (results.csv), both as Markdown (results.md), and
a plot (results.png).

Every figure is read back from what the runs left: `launch/evaluate.py`'s scores.json per run and compare.json per
row (paired bootstrap against the baseline, the paired seeds' predictions pooled), and each run's provenance from
its own directories -- the decoder from the initialised model's config, the objectives from the pretraining run's
saved config, the steps from the newest complete checkpoints -- so the table shows what was run, not what was
asked. The held-out NLL leads (at this size likelihood separates models long before generation does); the
degeneracy diagnostics and a constant row (the baseline's most frequent output per language, for every input,
scored by the same code) show what the generation metrics of a degenerate system are worth. The files hold no
timings or absolute paths: the same runs give byte-identical tables.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from swcm.ablation.config import AblationConfig, RowConfig
from swcm.ablation.plan import TARGETS, RunDirs, compare_dir, paired_seeds
from swcm.atomic_write import write_atomic
from swcm.training.checkpointing import complete_checkpoints

METRICS = (("nll", "NLL"), ("chrf", "chrF"), ("rouge_l_f", "ROUGE-L F"))   # the first is the primary metric
DIAGNOSTICS = (("distinct", "distinct %"), ("repeated_unit", "one unit %"), ("repeated_ngram", "rep-4 %"))
CONSTANT_ID = "constant"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _newest_step(run_dir: Path) -> int | None:
    found = complete_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found else None


def run_record(out: Path, run: RunDirs) -> dict:
    """One run's provenance (from its directories) and scores (from its scores.json)."""
    row = run.row
    rec = {"row_id": row.id, "row": row.name, "seed": run.seed, "model": row.model}
    if row.model == "swcm":
        from swcm.modeling_swcm import SWCMConfig

        init = SWCMConfig.from_pretrained(str(out / run.init))
        rec.update(decoder=init.layer_pattern, decoder_init=init.decoder_init, init_dir=run.init)
    else:
        dec = _json(out / run.finetune / "hf" / "config.json")["decoder"]
        rec.update(decoder=f"HF x{dec['num_hidden_layers']}", decoder_init="encoder copy + random cross-attention",
                   init_dir="")
    if (out / run.pretrain / "config.json").is_file():
        pre = _json(out / run.pretrain / "config.json")
        rec.update(pretrain_task=pre["task"], mt_ratio=pre["run"]["data"]["mt_ratio"], pretrain_run=run.pretrain,
                   pretrain_steps=_newest_step(out / run.pretrain))
    else:
        rec.update(pretrain_task="", mt_ratio="", pretrain_run="", pretrain_steps=0)
    ft = _json(out / run.finetune / "config.json")
    rec.update(finetune_task=ft["task"], finetune_from=ft["run"]["model"]["init_run"] or ft["run"]["model"]["path"],
               finetune_run=run.finetune, finetune_steps=_newest_step(out / run.finetune))
    scores = _json(out / run.scores)["scores"]
    overall = scores["overall"]
    rec.update(nll=overall["nll"], ppl=overall["ppl"], chrf=overall["chrf"], rouge_l_f=overall["rouge_l"]["f"],
               rouge_l_p=overall["rouge_l"]["p"], rouge_l_r=overall["rouge_l"]["r"], n=overall["n"],
               **{key: overall[key] for key, _ in DIAGNOSTICS})
    for lang in TARGETS:
        if lang in scores:
            rec[f"nll_{lang}"] = scores[lang]["nll"]
            rec[f"chrf_{lang}"] = scores[lang]["chrf"]
            rec[f"bleu_{lang}"] = scores[lang]["bleu"]["score"]
            rec[f"repeated_unit_{lang}"] = scores[lang]["repeated_unit"]
    return rec


def constant_record(cfg: AblationConfig, out: Path) -> dict:
    """The constant row: each seed of the baseline row replaced by its most frequent output per target language
    (`swcm.tasks.degeneracy.constant_outputs`), scored as evaluate.py scores; the mean over the seeds. No NLL: a
    constant system assigns the references no likelihood."""
    from swcm.tasks.degeneracy import constant_outputs
    from swcm.tasks.jsonl import read_predictions
    from swcm.tasks.scores import OVERALL, score_predictions

    base = cfg.baseline_row()
    overall = []
    for k in range(1, base.seeds + 1):
        examples, predictions = read_predictions(out / RunDirs(base, k).predictions)
        overall.append(score_predictions(examples, constant_outputs(examples, predictions))[OVERALL])
    rec = {"row_id": CONSTANT_ID, "row": f"constant ({base.name}'s most frequent output)",
           "what": f"every input gets the most frequent output of {base.name} in its target language",
           "seeds": len(overall), "nll_mean": None, "nll_sd": None}
    values = {"chrf": [o["chrf"] for o in overall], "rouge_l_f": [o["rouge_l"]["f"] for o in overall],
              **{key: [o[key] for o in overall] for key, _ in DIAGNOSTICS}}
    for key, vs in values.items():
        rec[f"{key}_mean"] = statistics.fmean(vs)
        if key in ("chrf", "rouge_l_f"):
            rec[f"{key}_sd"] = statistics.stdev(vs) if len(vs) > 1 else None
    return rec


def row_record(cfg: AblationConfig, out: Path, row: RowConfig, runs: list[dict]) -> dict:
    """A row: mean and sample standard deviation over its seeds, and the bootstrap difference to the baseline."""
    rec = {"row_id": row.id, "row": row.name, "what": row.what, "seeds": len(runs)}
    for key, _ in METRICS:
        values = [r[key] for r in runs]
        rec[f"{key}_mean"] = statistics.fmean(values)
        rec[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    for key, _ in DIAGNOSTICS:
        rec[f"{key}_mean"] = statistics.fmean(r[key] for r in runs)
    compare = out / compare_dir(row) / "compare.json"
    paired = paired_seeds(cfg, row) if row.id != cfg.baseline else []
    rec["paired_seeds"] = len(paired)
    overall = _json(compare)["compare"]["groups"]["overall"] if paired else {}
    for key, _ in METRICS:
        d = overall.get(key)
        rec[f"delta_{key}"] = d["delta"] if d else None
        rec[f"delta_{key}_low"], rec[f"delta_{key}_high"] = d["ci95"] if d else (None, None)
        rec[f"delta_{key}_p"] = d["p_value"] if d else None
    return rec


def _csv(rows: list[dict]) -> str:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in fields})
    return buf.getvalue()


def _cell(v):
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else v


def _pm(mean: float | None, sd: float | None, digits: int = 2) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _digits(key: str) -> int:
    return 3 if key == "nll" else 2   # nats per token: differences of a few hundredths matter


def _delta(rec: dict, key: str) -> str:
    if rec.get(f"delta_{key}") is None:
        return "—"
    d = _digits(key)
    return (f"{rec[f'delta_{key}']:+.{d}f} [{rec[f'delta_{key}_low']:+.{d}f}, {rec[f'delta_{key}_high']:+.{d}f}] "
            f"p={rec[f'delta_{key}_p']:.3f}")


def _objectives(mt_ratio: float) -> str:
    """A pretraining run's objectives, from the MT share it was run with."""
    return {0.0: "DAE only", 1.0: "MT only"}.get(mt_ratio, f"DAE + MT ({mt_ratio:.0%} MT)")


def markdown(cfg: AblationConfig, rows: list[dict], runs: list[dict], command: str) -> str:
    base = cfg.baseline_row().name
    e, p, f, c = cfg.encoder, cfg.pretrain, cfg.finetune, cfg.corpus
    lines = [
        "# Ablations in miniature", "",
        f"`{command}`", "",
        f"- encoder: XLM-R, {e.num_hidden_layers} layers, hidden {e.hidden_size}, vocabulary {c.vocab_size} (+5 "
        f"language tags), masked-LM pretraining from scratch for {e.max_steps} steps on the demo corpus",
        f"- every row: seq2seq pretraining {p.max_steps} steps (lr {p.lr:g}, ≤{p.max_tokens} tokens x "
        f"≤{p.micro_batch_size} samples a step; DAE + MT rows read {p.mt_ratio:.0%} MT), then fine-tuning "
        f"{f.max_steps} steps (lr {f.lr:g}) on NTREX-128 zh→bo/kk/mn/ug train pairs",
        f"- scored on the NTREX-128 dev pairs zh→bo/kk/mn/ug ({runs[0]['n']} sentences) by `launch/evaluate.py`: "
        "NLL = nats per reference token under teacher forcing (the primary metric: lower is better), then beam "
        f"{cfg.eval.beam}: chrF (sacrebleu chrF2), ROUGE-L F (per sample, script-aware tokens)",
        "- degeneracy: distinct % = distinct outputs / outputs; one unit % = outputs of one repeated syllable, "
        "character or word; rep-4 % = mean repeated 4-gram rate (swcm/tasks/degeneracy.py). The constant row gives "
        f"every input {base}'s most frequent output in its language: generation scores at or below it mean little",
        f"- mean ± sample standard deviation over seeds; Δ = row − {base} by paired bootstrap (1,000 resamples) "
        f"on the pooled predictions of the paired seeds (seed k against seed k), 95% interval and p-value", "",
        f"| row | seeds | NLL | Δ NLL vs {base} [95% CI] | chrF | ROUGE-L F | Δ chrF [95% CI] | Δ ROUGE-L F [95% CI] | "
        + " | ".join(label for _, label in DIAGNOSTICS) + " |",
        "|---|---:|---:|---|---:|---:|---|---|" + "---:|" * len(DIAGNOSTICS),
    ]
    for r in rows:
        diag = " | ".join(f"{r[f'{key}_mean']:.1f}" for key, _ in DIAGNOSTICS)
        lines.append(f"| {r['row']} | {r['seeds']} | {_pm(r['nll_mean'], r['nll_sd'], 3)} | {_delta(r, 'nll')} | "
                     f"{_pm(r['chrf_mean'], r['chrf_sd'])} | {_pm(r['rouge_l_f_mean'], r['rouge_l_f_sd'])} | "
                     f"{_delta(r, 'chrf')} | {_delta(r, 'rouge_l_f')} | {diag} |")
    lines += ["", "## Rows", "", "| row | what |", "|---|---|"]
    lines += [f"| {r['row']} | {r['what']} |" for r in rows]
    lines += ["", "## Runs", "",
              "| row | seed | decoder | pretraining | steps pre / fine | NLL | NLL " + "/".join(TARGETS) + " | chrF | "
              "chrF " + "/".join(TARGETS) + " | ROUGE-L F / P / R | one unit % " + "/".join(TARGETS) + " |",
              "|---|---:|---|---|---|---:|---|---:|---|---|---|"]
    for r in runs:
        pre = _objectives(r["mt_ratio"]) if r["pretrain_run"] else "none"
        per_lang = {key: " / ".join(f"{r.get(f'{key}_{lang}', float('nan')):.{digits}f}" for lang in TARGETS)
                    for key, digits in (("nll", 2), ("chrf", 1), ("repeated_unit", 0))}
        lines.append(f"| {r['row']} | {r['seed']} | {r['decoder']} | {pre} | {r['pretrain_steps']} / "
                     f"{r['finetune_steps']} | {r['nll']:.3f} | {per_lang['nll']} | {r['chrf']:.2f} | "
                     f"{per_lang['chrf']} | {r['rouge_l_f']:.2f} / {r['rouge_l_p']:.2f} / {r['rouge_l_r']:.2f} | "
                     f"{per_lang['repeated_unit']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], runs: list[dict], path: Path) -> None:
    """Bars: the row means of NLL, chrF and ROUGE-L F, whiskers one standard deviation, dots the seeds (the rows of
    runs only: the constant row has no NLL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 4.2), constrained_layout=True)
    xs = range(len(rows))
    for ax, (key, label) in zip(axes, METRICS):
        ax.bar(xs, [r[f"{key}_mean"] for r in rows], yerr=[r[f"{key}_sd"] or 0 for r in rows], capsize=3,
               color=["#4c72b0" if i == 0 else "#999999" for i in xs])
        for i, r in enumerate(rows):
            seeds = [x[key] for x in runs if x["row_id"] == r["row_id"]]
            ax.scatter([i] * len(seeds), seeds, color="black", s=10, zorder=3)
        ax.set_xticks(list(xs), [r["row"] for r in rows], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (dev, zh→bo/kk/mn/ug)")
    fig.suptitle("bars: mean over seeds, whiskers: ± 1 sd, dots: seeds", fontsize=9)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def write_report(cfg: AblationConfig, out: Path, runs_of: dict, command: str) -> None:
    """results.md, results.csv, runs.csv and results.png in `out`; `runs_of` maps a row id to its RunDirs."""
    runs = [run_record(out, run) for row in cfg.rows for run in runs_of[row.id]]
    rows = [row_record(cfg, out, row, [r for r in runs if r["row_id"] == row.id]) for row in cfg.rows]
    base = next(i for i, r in enumerate(rows) if r["row_id"] == cfg.baseline)
    rows.insert(0, rows.pop(base))
    table = rows + [constant_record(cfg, out)]
    write_atomic(out / "runs.csv", _csv(runs))
    write_atomic(out / "results.csv", _csv(table))
    write_atomic(out / "results.md", markdown(cfg, table, runs, command))
    plot(rows, runs, out / "results.png")
