"""The `safedrift` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import DEFAULT_PRESET, ConfigError, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PRESET,
                   help=f"preset name (smoke, laptop, paper) or YAML path (default: {DEFAULT_PRESET})")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.lr=1e-4 eval_langs=[en,es]")
    p.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://host:10001); default local")


def _load(args: argparse.Namespace) -> Any:
    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    return load_config(args.config, overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
    print(f"# config hash: {cfg.digest()}  workdir: {cfg.resolved_workdir()}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipelines.registries.datasets import DATASETS
    from pipelines.registries.judges import JUDGES
    from pipelines.registries.languages import LANGUAGES
    from pipelines.registries.models import MODELS
    from pipelines.registries.translators import TRANSLATORS

    reg = {"models": MODELS, "languages": LANGUAGES, "datasets": DATASETS, "translators": TRANSLATORS,
           "judges": JUDGES}[args.kind]
    for name, item in reg.items():
        extra = getattr(item, "name", "") if args.kind == "languages" else getattr(item, "source", "")
        print(f"{name}\t{extra}")
    return 0


def _print_study(res: Any, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    stages = Table(title="stages")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col)
    for name, info in res.stages.items():
        stages.add_row(name, "reused" if info["reused"] else "ran", f"{info['seconds']:.1f}")
    console.print(stages)
    table = Table(title="compliance rate with unsafe prompts (cell × eval language)")
    langs = [c["lang"] for c in res.results[0]["compliance"]] if res.results else []
    table.add_column("cell")
    for lang in langs:
        table.add_column(lang, justify="right")
    for r in res.results:
        rates = {c["lang"]: c["compliance_rate"] for c in r["compliance"]}
        table.add_row(r["cell_id"], *[f"{rates[lang]:.2f}" if rates.get(lang) is not None else "–"
                                      for lang in langs])
    console.print(table)
    console.print(f"report: {res.report_path / 'report.html'}")
    console.print(f"MLflow parent run: {res.parent_run_id}  (store: {res.workdir})")
    console.print(f"done in {elapsed:.1f} s")


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_study

    cfg = _load(args)
    t0 = time.time()
    res = run_study(cfg, resume=not args.no_resume)
    _print_study(res, time.time() - t0)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The study with the grid as its point: says which cells were reused and which ran, so a resumed
    sweep shows that it redid nothing already finished."""
    from pipelines.run import run_study

    cfg = _load(args)
    t0 = time.time()
    res = run_study(cfg, resume=not args.no_resume)
    _print_study(res, time.time() - t0)
    everything_reused = res.stages.get("sweep", {}).get("reused", False)
    for r in res.results:
        status = "reused" if r.get("reused", everything_reused) else "ran"
        print(f"cell {r.get('cell_id')}: {status}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from pipelines.prepare import prepare

    cfg = _load(args)
    for step, seconds in prepare(cfg).items():
        print(f"prepared {step} ({seconds:.1f} s)")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from cluster.connect import connect
    from cluster.storage import workdir_path
    from pipelines.translate import build_datasets

    cfg = _load(args)
    connect(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard)
    ds = build_datasets(cfg, workdir_path(cfg.resolved_workdir()), force_ray=args.force_ray)
    print(("reused " if ds.reused else "built ") + str(ds.path))
    print(json.dumps(ds.manifest["counts"], indent=2))
    # Aggregates only (never the texts): QA per split × language, malformed input lines, cache use.
    for kind, langs in ds.manifest.get("qa", {}).items():
        for lang, t in langs.items():
            print(f"qa {kind}/{lang}: rows={t['rows']} flagged={t['flagged']} kept={t['kept_by_policy']} "
                  f"lang_mismatch={t['lang_mismatch']} chrf_mean={t['chrf_mean']}")
    for source, bad in ds.manifest.get("malformed", {}).items():
        print(f"malformed {source}: {bad['count']} lines {[(b['file'], b['line']) for b in bad['lines']][:20]}")
    if not ds.reused:
        print(f"translation: {json.dumps(ds.manifest.get('translation', {}))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Redraw a study's report: from a config (its workdir), or from a sweep or report directory."""
    from pathlib import Path

    from pipelines.report import report_for_config, report_from_dir

    out = Path(args.out) if args.out else None
    if args.sweep_dir:
        res = report_from_dir(Path(args.sweep_dir), out, log_mlflow=not args.no_mlflow)
    else:
        if args.workdir:
            args.overrides = [*args.overrides, f"workdir={args.workdir}"]
        res = report_for_config(_load(args), out, log_mlflow=not args.no_mlflow)
    # Findings are aggregates (cell ids, languages, rates): safe to print, unlike prompts or answers.
    for key, f in res.manifest.get("findings", {}).items():
        print(f"{key}: {f.get('status', 'ok') if isinstance(f, dict) else f}")
    if res.manifest.get("missing_cells"):
        print(f"missing cells: {', '.join(res.manifest['missing_cells'])}")
    if res.note:
        print(f"note: {res.note}")
    print(f"report: {res.path / 'report.html'}")
    print(f"MLflow parent run: {res.logged_to or 'not logged'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import serve_judge

    serve_judge(args.config, host=args.host, port=args.port, blocking=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safedrift", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole study: translate → fine-tune grid → evaluate → report")
    _config_args(p)
    p.add_argument("--no-resume", action="store_true", help="start the Tune sweep afresh")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="the fine-tune/eval grid with Ray Tune (resumes by default)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", default=True,
                   help="resume an interrupted sweep (default): finished cells are reused, Tune's state restored")
    p.add_argument("--no-resume", action="store_true",
                   help="start a new Tune grid (finished cells are still reused)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="redraw a study's HTML report, figures and tables (and log them to MLflow)")
    _config_args(p)
    p.add_argument("--workdir", default=None, help="the study's workdir (same as the override workdir=...)")
    p.add_argument("--sweep-dir", default=None,
                   help="a sweep directory (workdir/sweeps/<study>/<store>) or report directory to redraw from "
                        "instead of a config")
    p.add_argument("--out", default=None, help="write the report here (default: workdir/reports/<study hash>)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the sweep's parent run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prepare", help="convert the preset's models and fit its judge once (setup runs this)")
    _config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    q = csub.add_parser("show", help="print the resolved config")
    _config_args(q)
    q.set_defaults(func=cmd_config_show)

    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("build", help="translate the benign and eval sets (Ray Data)")
    _config_args(q)
    q.add_argument("--force-ray", action="store_true",
                   help="run Ray Data even when every segment is already in the translation cache")
    q.set_defaults(func=cmd_data_build)

    p = sub.add_parser("list", help="list a registry")
    p.add_argument("kind", choices=["models", "languages", "datasets", "translators", "judges"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("serve", help="serve the judge over HTTP with Ray Serve")
    p.add_argument("--config", "-c", default="serving/judge.yaml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # DeepSpeed's CPU comm op, compiled once by scripts/setup.sh into the checkout's cache: without this
    # the first fine-tune would compile it again (about 70 s) under ~/.cache.
    project_ops = Path(__file__).resolve().parent.parent / ".cache" / "torch_extensions"
    if project_ops.is_dir():
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(project_ops))
    from pipelines.registry import UnknownNameError

    try:
        return args.func(args)
    except (ConfigError, UnknownNameError, FileNotFoundError, ValueError) as exc:
        print(f"safedrift: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
