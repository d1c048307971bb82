"""`launch/ablate.py`: check the config and the output directory, then run (or continue) the stages."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

from swcm.ablation.config import AblationConfig
from swcm.ablation.plan import REPO, all_runs, stages
from swcm.ablation.runner import Runner
from swcm.config import ConfigError, load_config

log = logging.getLogger(__name__)

CONFIG_NAME = "ablation.json"   # the resolved config an output directory was started with


def _check_out(out: Path, resolved: dict) -> None:
    """ConfigError unless `out` is new, or holds a run of this very config (which then continues)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, expected a directory")
    saved = out / CONFIG_NAME
    if saved.is_file():
        if json.loads(saved.read_text()) != resolved:
            raise ConfigError(f"--out {out}: holds an ablation started with another config ({saved}); continue it "
                              "with that config, or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists, is not empty and holds no {CONFIG_NAME}: not an ablation directory")


def _command(config_path: str, overrides: list[str]) -> str:
    """The command line that reproduces the run, for the report (the output directory left out: the same runs give
    the same table wherever they were written)."""
    path = Path(config_path).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return " ".join(["python launch/ablate.py --config", shlex.quote(str(shown)), "--out DIR",
                     *(f"--set {shlex.quote(o)}" for o in overrides)])


def ablate(config_path: str, overrides: list[str], out: str) -> int:
    """Run every stage not done yet of the ablation `config_path` into `out`; returns the exit code (2 with one
    `error:` line for a bad config or output directory, before any work)."""
    command = _command(config_path, overrides)
    out_dir = Path(out).resolve()
    try:
        cfg = load_config(config_path, overrides, cls=AblationConfig)
        cfg.check()
        resolved = cfg.to_dict()
        _check_out(out_dir, resolved)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_NAME).write_text(json.dumps(resolved, indent=1) + "\n")
    runs_of = {row.id: [r for r in all_runs(cfg) if r.row.id == row.id] for row in cfg.rows}
    def report():
        from swcm.ablation.report import write_report   # torch, matplotlib: only when the runs are done

        write_report(cfg, out_dir, runs_of, command)

    plan = stages(cfg, out_dir, report)
    log.info("%d stages, %d runs of %d rows, into %s (%d cores)", len(plan), len(all_runs(cfg)), len(cfg.rows),
             out_dir, cfg.cores)
    code = Runner(plan, out_dir, cwd=out_dir, cores=cfg.cores).run()
    if code == 0:
        log.info("done: %s", out_dir / "results.md")
        print((out_dir / "results.md").read_text(encoding="utf-8"))
    return code


DEFAULT_CONFIG = REPO / "configs" / "ablations" / "mini.json"
SMOKE_CONFIG = REPO / "configs" / "ablations" / "smoke.json"
