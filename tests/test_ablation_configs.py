"""docs/ablations.md's table of the paper's Tables 3-5 against `configs/ablations/` and the converter: each config
loads, differs from `configs/xlm-swcm-base.json` exactly in the keys the table names, trains the `model.path` the
table gives; each row's `from-encoder` flags are accepted and build the decoder the table shows."""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from swcm.config import load_config
from swcm.modeling_swcm import SWCMConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = "configs/xlm-swcm-base.json"
sys.path.insert(0, str(ROOT / "launch"))
import convert_checkpoint  # noqa: E402

# The encoder the paper starts from, CINO-base-v2: what the decoder column describes.
CINO_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 135_135, "max_position_embeddings": 514}


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def table_rows() -> list[dict]:
    """The rows of the table under docs/ablations.md's `## 7. The paper's Tables` heading, by column name (without
    backticks)."""
    text = (ROOT / "docs" / "ablations.md").read_text(encoding="utf-8")
    section = text.split("\n## 7. The paper's Tables", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip().replace("`", "") for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]
    assert rows and all(len(r) == len(header) for r in rows)
    return rows


ROWS = table_rows()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _diff(a: dict, b: dict) -> dict:
    """{key: value in b} for every dotted key whose value differs between the nested dicts a and b."""
    fa, fb = _flat(a), _flat(b)
    return {k: fb.get(k) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def _named(cell: str) -> dict:
    """`key=value` items of a table cell, values read as JSON where they parse (numbers), else as strings."""
    out = {}
    for item in _code(cell):
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def test_the_table_has_every_row_of_the_papers_tables_3_to_5():
    names = [r["row"].split(" (")[0] for r in ROWS]
    assert names == ["XLM-SWCM", "−MT", "−DAE", "−WS", "−MT−DAE", "−MT−WS", "−DAE−WS", "−MT−DAE−WS", "Cino-Transformer",
                     "BASE-A", "BASE-B"]
    configs = [p for r in ROWS for p in _code(r["pretraining config"])]
    assert len(configs) == len(set(configs)), "two rows name one config"


@pytest.mark.parametrize("row", ROWS, ids=[r["row"] for r in ROWS])
def test_config_differs_from_the_base_exactly_where_the_table_says(row):
    base = load_config(ROOT / BASE).to_dict()
    paths = _code(row["pretraining config"])
    if not paths:   # no pretraining run: the row fine-tunes the from-encoder directory itself
        assert row["pretraining config"].startswith("none") and row["differs from the base"] == "—"
        return
    cfg = load_config(ROOT / paths[0])
    assert _diff(base, cfg.to_dict()) == _named(row["differs from the base"])
    assert cfg.model.path == _code(row["model.path"])[0]
    # The files themselves: the same JSON as the base but for those keys (nothing implied by a default).
    raw_base, raw = (json.loads((ROOT / p).read_text()) for p in (BASE, paths[0]))
    assert _diff(raw_base, raw) == _named(row["differs from the base"])


def test_every_model_path_has_one_set_of_from_encoder_flags():
    flags = {}
    for row in ROWS:
        flags.setdefault(_code(row["model.path"])[0], set()).add(_code(row["from-encoder flags"])[0])
    assert all(len(f) == 1 for f in flags.values()), flags


@pytest.mark.parametrize("row", ROWS, ids=[r["row"] for r in ROWS])
def test_from_encoder_flags_are_accepted_and_build_the_decoder_shown(row):
    path = _code(row["model.path"])[0]
    argv = ["from-encoder", "--encoder", "CINO_DIR", "--out", path, *shlex.split(_code(row["from-encoder flags"])[0])]
    args = convert_checkpoint.parse_args(argv)
    config = SWCMConfig.from_encoder_config(CINO_BASE, normal_layer_every=args.normal_layer_every,
                                            decoder_init=args.decoder_init)
    assert [config.layer_pattern, config.decoder_init] == _code(row["decoder"])

