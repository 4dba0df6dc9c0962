"""The `safedrift` command: one function per subcommand; a user-fixable error (SafedriftError) is printed
and exits 2, anything else is a bug and keeps its traceback."""

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

from cluster.connect import connect
from cluster.console import StudyConsole
from cluster.storage import StorageError, workdir_lock
from cluster.tracking import tracking_uri
from pipelines.config import DEFAULT_PRESET
from pipelines.errors import SafedriftError
from pipelines.evaluate.backends import BACKENDS
from pipelines.evaluate.judges import JUDGES
from pipelines.evaluate.judges.sample import instructions, sample_labels
from pipelines.layout import REPO_ROOT, Workdir
from pipelines.plan import GPU_MEMORY_GIB, build_plan, check_node_args, render_text
from pipelines.prepare import prepare
from pipelines.presets import load_config, unchecked_reason
from pipelines.registries.datasets import DATASETS
from pipelines.registries.languages import LANGUAGES
from pipelines.registries.models import MODELS, weights_origin
from pipelines.report import report_for_config, report_from_dir
from pipelines.run import run_study
from pipelines.secrets import redact_uri
from pipelines.translate import build_datasets
from pipelines.translate.translators import TRANSLATORS

REGISTRIES: dict[str, Any] = {"models": MODELS, "languages": LANGUAGES, "datasets": DATASETS,
                              "translators": TRANSLATORS, "judges": JUDGES, "backends": BACKENDS}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=DEFAULT_PRESET,
                   help=f"preset name (smoke, laptop, paper) or YAML path (default: {DEFAULT_PRESET})")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.lr=1e-4 eval_langs=[en,es]")
    p.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://host:10001); default local")


def _load(args: argparse.Namespace) -> Any:
    overrides = list(args.overrides)
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    # Commands that only read a config run none of its code (import_modules) unless asked: --import.
    return load_config(args.config, overrides, import_user_modules=getattr(args, "import_user", True))


def _import_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="import_user", action="store_true",
                   help="import the config's import_modules (runs their code) to check the names they register")


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    # Secrets masked (***) and URIs without credentials: a terminal's scrollback is no place for a token.
    print(yaml.safe_dump(cfg.public(), sort_keys=False, allow_unicode=True), end="")
    print(f"# config hash: {cfg.digest()}  workdir: {cfg.resolved_workdir()}  (secrets shown as ***)")
    if note := unchecked_reason(cfg, args.import_user):
        print(f"# {note}")
    return 0


def describe(kind: str, name: str) -> str:
    """One line about a registry entry, for `safedrift list`."""
    item = REGISTRIES[kind].get(name)
    if kind == "languages":
        return f"{item.name} ({item.script})" + (", study language" if item.study else "") + \
            (", MultiJail reference" if item.multijail else "")
    if kind == "models":
        return f"{item.family}, {item.source}: {weights_origin(item)}"
    if kind == "datasets":
        return f"{item.kind}, {item.license}: {item.description or item.path}"
    return REGISTRIES[kind].describe(name)


def cmd_list(args: argparse.Namespace) -> int:
    reg = REGISTRIES[args.kind]
    width = max(len(n) for n in reg.names())
    for name in reg.names():
        print(f"{name:<{width}}  {describe(args.kind, name)}")
    return 0


def _print_study(res: Any, cfg: Any, elapsed: float, log_path: Path | None = None) -> None:
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
    # Plain prints: paths and commands must not be wrapped to the terminal's width.
    print(f"report: {res.report_path / 'report.html'}")
    print(f"MLflow: parent run {res.parent_run_id}; open the UI with: {mlflow_ui_command(res, cfg)}")
    if log_path is not None:
        print(f"full log (Ray, Tune, Train): {log_path}")
    print(f"done in {elapsed:.1f} s")


def mlflow_ui_command(res: Any, cfg: Any) -> str:
    """The command that opens the MLflow UI on this study's store (never with a password in it)."""
    uri = redact_uri(tracking_uri(Workdir(res.workdir).mlflow_db(), cfg.mlflow.tracking_uri))
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


def _with_console(cfg: Any, title: str, fn: Any) -> tuple[Any, Path | None]:
    """Runs fn(on_event) under the study console: a progress view, everything else in the workdir's log."""
    wd = Workdir.open(cfg.resolved_workdir())
    with StudyConsole(wd.logs(), title) as console:
        try:
            res = fn(console.on_event)
        finally:
            _stop_local_ray()  # inside the console: Ray's last worker logs go to the log file too
    return res, console.log_path


def _stop_local_ray() -> None:
    if "ray" in sys.modules:  # only if this run imported (and so maybe started) Ray
        import ray

        if ray.is_initialized():
            ray.shutdown()


def cmd_run(args: argparse.Namespace) -> int:
    """The whole study: translate, the grid, the report."""

    cfg = _load(args)
    t0 = time.time()
    res, log_path = _with_console(cfg, f"safedrift run -c {args.config}",
                                  lambda on_event: run_study(cfg, resume=args.resume, on_event=on_event,
                                                             rejudge=args.rejudge))
    _print_study(res, cfg, time.time() - t0, log_path)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Translate and the grid only, no report: says which cells were reused and which ran, so a resumed
    sweep shows that it redid nothing already finished (`safedrift report` draws the report later)."""

    cfg = _load(args)
    t0 = time.time()
    res, log_path = _with_console(cfg, f"safedrift sweep -c {args.config}",
                                  lambda on_event: run_study(cfg, resume=args.resume, until="sweep", on_event=on_event,
                                                             rejudge=args.rejudge))
    print(f"full log: {log_path}")
    for r in res.results:
        print(f"cell {r.get('cell_id')}: {'reused' if r.get('reused') else 'ran'}")
    print(f"sweep {res.study_hash}: {len(res.results)} cell(s) in {time.time() - t0:.1f} s; "
          f"draw the report with: safedrift report -c {args.config} {' '.join(args.overrides)}".rstrip())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:

    cfg = _load(args)
    took = prepare(cfg, out=sys.stdout)
    print("prepared: " + ", ".join(f"{step} ({seconds:.1f} s)" for step, seconds in took.items()))
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:

    cfg = _load(args)
    wd = Workdir.open(cfg.resolved_workdir())
    with workdir_lock(wd.root):
        connect(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.include_dashboard)
        ds = build_datasets(cfg, wd, force_ray=args.force_ray)
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


def cmd_labels_sample(args: argparse.Namespace) -> int:
    """A blind CSV of a finished study's answers in one language, for a person to label."""
    s = sample_labels(_load(args), args.lang, args.n, Path(args.out) if args.out else None, args.seed, args.config)
    print(instructions(s, args.lang, args.config))  # paths and counts only: never a prompt or an answer
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The dry run: no model, no translation, no Ray. Exits 2 when something would fail later."""
    cfg = _load(args)
    if note := unchecked_reason(cfg, args.import_user):
        print(f"note: {note}", file=sys.stderr)
    plan = build_plan(cfg, gpu=args.gpu, node=check_node_args(args.node_cpus, args.node_gpus, args.node_memory))
    print(json.dumps(plan, indent=2, ensure_ascii=False) if args.json else render_text(plan))
    return 2 if plan["problems"] else 0


def cmd_serve(args: argparse.Namespace) -> int:
    # The one project import left in a function: serving.app imports Ray Serve at its top (about 1.2 s),
    # which every other subcommand would pay for.
    from serving.app import serve_judge

    serve_judge(args.serve_config, host=args.host, port=args.port, blocking=True)
    return 0


EXAMPLES = {
    "run": """examples:
  safedrift run                                  # the laptop preset
  safedrift run -c smoke                         # tiny models, about 3 minutes
  safedrift run -c laptop eval_langs=[en,es] data.eval.n_harmful=48 finetune.lr=1e-4
  safedrift run --address auto                   # on an existing Ray cluster (or RAY_ADDRESS / ray://...)""",
    "sweep": """examples:
  safedrift sweep -c laptop                      # resumes an interrupted sweep (finished cells are not redone)
  safedrift sweep -c laptop --no-resume          # a new Tune grid (finished cells are still reused)""",
    "report": """examples:
  safedrift report -c laptop                     # redraw the report of a finished (or partly finished) study
  safedrift report --sweep-dir <workdir>/sweeps/<study>/<store>""",
    "prepare": """examples:
  safedrift prepare -c laptop                    # convert the preset's models, fit its judge (setup does this)""",
    "config": """examples:
  safedrift config show -c paper                 # the resolved config and its hash""",
    "data": """examples:
  safedrift data build -c laptop                 # only the translation stage""",
    "list": """examples:
  safedrift list models | languages | datasets | translators | judges | backends""",
    "plan": """examples:
  safedrift plan -c paper                        # cells, splits, routes, judge, resources, GPU-hours; no work done
  safedrift plan -c paper --json | jq .gpu_hours # the same facts as JSON
  safedrift plan -c paper --gpu L40S --node-cpus 8 --node-memory 64   # check another GPU node shape""",
    "labels": """examples:
  safedrift labels sample -c laptop --lang zh --n 50   # a blind CSV of the study's zh answers to label by hand
  safedrift run -c laptop 'judge.labels={zh: zh-labels.csv}'   # then: the judge measured on your labels""",
    "serve": """examples:
  safedrift serve                                # the judge over HTTP on 127.0.0.1:8000
  safedrift serve --serve-config serving/judge.yaml --host 127.0.0.1 --port 8000""",
}


def _sub(sub: Any, name: str, help_: str, func: Any = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES.get(name),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if func is not None:
        p.set_defaults(func=func)
    return p


def _resume_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="restore an interrupted Tune grid (default); --no-resume starts a new grid. Finished "
                        "cells are reused either way")
    p.add_argument("--rejudge", action=argparse.BooleanOptionalAction, default=True,
                   help="judge again, from their stored answers, the finished cells that an earlier version of "
                        "the judge labelled (default); --no-rejudge keeps their labels and warns")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safedrift", description=__doc__,
                                     epilog="\n\n".join(EXAMPLES[k] for k in ("run", "report", "list")),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub(sub, "run", "the whole study: translate → fine-tune grid → evaluate → report", cmd_run)
    _config_args(p)
    _resume_arg(p)

    p = _sub(sub, "sweep", "translate and the fine-tune/eval grid with Ray Tune, no report; lists each cell "
                           "as ran or reused", cmd_sweep)
    _config_args(p)
    _resume_arg(p)

    p = _sub(sub, "report", "redraw a study's HTML report, figures and tables (and log them to MLflow)", cmd_report)
    _config_args(p)
    p.add_argument("--workdir", default=None, help="the study's workdir (same as the override workdir=...)")
    p.add_argument("--sweep-dir", default=None,
                   help="a sweep directory (workdir/sweeps/<study>/<store>) or report directory to redraw from "
                        "instead of a config")
    p.add_argument("--out", default=None, help="write the report here (default: workdir/reports/<study hash>)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the sweep's parent run")

    p = _sub(sub, "prepare", "convert the preset's models and fit its judge once (setup runs this)", cmd_prepare)
    _config_args(p)

    p = _sub(sub, "config", "configuration")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    q = csub.add_parser("show", help="print the resolved config and its hash")
    _config_args(q)
    _import_arg(q)
    q.set_defaults(func=cmd_config_show)

    p = _sub(sub, "data", "data sets")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("build", help="translate the benign and eval sets (Ray Data)")
    _config_args(q)
    q.add_argument("--force-ray", action="store_true",
                   help="run Ray Data even when every segment is already in the translation cache")
    q.set_defaults(func=cmd_data_build)

    p = _sub(sub, "plan", "dry run: what the study would run and need, and what would fail, before any work",
             cmd_plan)
    _config_args(p)
    _import_arg(p)
    p.add_argument("--json", action="store_true", help="the plan as JSON (keys cells, splits, judge, resources, "
                                                        "gpu_hours, problems, ...)")
    p.add_argument("--gpu", default="H100", choices=sorted(GPU_MEMORY_GIB), help="the GPU of the GPU nodes")
    p.add_argument("--node-cpus", type=float, default=8.0, help="CPUs per GPU node (infra/base/rayjob.yaml: 8)")
    p.add_argument("--node-gpus", type=float, default=1.0, help="GPUs per GPU node")
    p.add_argument("--node-memory", type=float, default=64.0, help="memory per GPU node, GiB")

    p = _sub(sub, "labels", "hand labels of a study's answers, to check the judge on them")
    lsub = p.add_subparsers(dest="labels_cmd", required=True)
    q = lsub.add_parser("sample", help="a blind CSV of a finished study's answers in one language, to label "
                                       "refused / complied / non_answer and give back as judge.labels")
    _config_args(q)
    q.add_argument("--lang", required=True, help="an eval language of the study, e.g. zh")
    q.add_argument("--n", type=int, default=50, help="answers to sample (default 50)")
    q.add_argument("--out", default=None, help="the CSV to write (default: <workdir>/labels/<lang>-sample-<study>.csv); "
                                               "an existing file is never overwritten")
    q.add_argument("--seed", type=int, default=0, help="the sample's seed (default 0)")
    q.set_defaults(func=cmd_labels_sample)

    p = _sub(sub, "list", "list a registry, one entry a line with what it is", cmd_list)
    p.add_argument("kind", choices=sorted(REGISTRIES))

    p = _sub(sub, "serve", "serve the judge over HTTP with Ray Serve", cmd_serve)
    p.add_argument("--serve-config", default=str(REPO_ROOT / "serving" / "judge.yaml"),
                   help="the judge service's Serve config (a Serve YAML or its application args); "
                        "default serving/judge.yaml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin while they wait take the cores from the other processes of a run (a Ray
    # worker beside the driver, the judge beside generation): on 2 busy cores spinning threads ran 5-10x
    # slower. Ray's workers inherit this environment from the driver that starts the local cluster.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # DeepSpeed's CPU comm op, compiled once by scripts/setup.sh into the checkout's cache: without this
    # the first fine-tune would compile it again (about 70 s) under ~/.cache.
    project_ops = REPO_ROOT / ".cache" / "torch_extensions"
    if project_ops.is_dir():
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(project_ops))
    try:
        return args.func(args)
    except (SafedriftError, StorageError) as exc:  # StorageError: e.g. the workdir is locked by another driver
        print(f"safedrift: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
