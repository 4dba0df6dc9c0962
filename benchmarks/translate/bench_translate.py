"""Translate-stage benchmarks (Apertium, CPU):

1. throughput: Ray Data (translator actors) vs a bare single-process batched loop doing the same
   per-batch work (segment → translate → cache write → QA) over the same rows, both from a cold cache;
   plus the translator alone (translate() in batches, nothing else) for reference;
2. warm-cache rebuild: the same build again after deleting its output, as a fraction of the first
   (driver path, which finds every segment cached, and Ray Data path forced);
3. QA pass rates per language for the Apertium routes on the shipped English sets.

    .venv/bin/python benchmarks/translate/bench_translate.py --out /tmp/bench_translate.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _cfg(workdir: Path, overrides: list[str]):
    from pipelines.presets import load_config

    return load_config("smoke", [f"workdir={workdir}", *overrides])


def throughput(n: int, batch_size: int, concurrency: int) -> dict:
    from pipelines.layout import Workdir
    from pipelines.translate import build_datasets, plan_jobs
    from pipelines.translate.batch import ALL_COLUMNS, TranslateBatch, job_rows
    from pipelines.translate.segment import split
    from pipelines.translate.translators import make_translator

    over = ["ft_langs=[es]", "eval_langs=[es]", f"data.benign.n={n}", "data.eval.n_harmful=1",
            "translate.qa.round_trip=false", f"translate.batch_size={batch_size}",
            f"translate.concurrency={concurrency}", "data.eval.n_safe=0", "evaluate.n_benign_ppl=0"]
    out: dict = {"rows": n, "batch_size": batch_size, "concurrency": concurrency}
    with tempfile.TemporaryDirectory() as d:
        wd = Path(d)
        cfg = _cfg(wd / "bare", over)
        rows = [r for j in plan_jobs(cfg) for r in job_rows(j)]
        chars = sum(len(r[f]) for r in rows for f in ("instruction", "input", "output", "prompt")
                    if r["lang"] != r["src_lang"])
        out["chars"] = chars
        # (a) the translator alone: every segment, batch by batch, nothing else
        tr = make_translator("apertium")
        segs = [s for r in rows if r["kind"] == "benign" for f in ("instruction", "input", "output")
                for s in split(r[f])[0]]
        t0 = time.time()
        for i in range(0, len(segs), batch_size * 8):  # a batch of rows holds ~8 segments per row
            tr.translate(segs[i:i + batch_size * 8], "en", "es")
        out["translator_only_s"] = round(time.time() - t0, 2)
        # (b) the bare loop: the actor's per-batch code in this process, batch by batch, cold cache. Its
        # set-up (translator, language-ID model) is timed too, as the Ray path pays it in each actor.
        t0 = time.time()
        worker = TranslateBatch(str(Workdir.open(wd / "bare").translation_cache()), {}, cfg.translate.qa.model_dump(), 0)
        out["bare_setup_s"] = round(time.time() - t0, 2)
        for i in range(0, len(rows), batch_size):
            part = rows[i:i + batch_size]
            worker.process({c: [r[c] for r in part] for c in ALL_COLUMNS})
        out["bare_loop_s"] = round(time.time() - t0, 2)
        # (c) Ray Data through build_datasets, cold cache (includes planning and writing the Parquet)
        cfg = _cfg(wd / "ray", over)
        t0 = time.time()
        res = build_datasets(cfg, wd / "ray", force_ray=True)
        out["ray_data_s"] = round(time.time() - t0, 2)
        out["ray_over_bare"] = round(out["bare_loop_s"] / out["ray_data_s"], 3)  # throughput ratio
        out["segments"] = res.stats["segments"]
    return out


def rebuild(n: int, batch_size: int) -> dict:
    from pipelines.translate import build_datasets

    over = ["ft_langs=[es,pt]", "eval_langs=[es,pt]", f"data.benign.n={n}", f"data.eval.n_harmful={n}",
            f"translate.batch_size={batch_size}"]
    out: dict = {"rows_per_split": n}
    with tempfile.TemporaryDirectory() as d:
        wd = Path(d)
        cfg = _cfg(wd, over)
        t0 = time.time()
        first = build_datasets(cfg, wd, force_ray=True)
        out["first_s"] = round(time.time() - t0, 2)
        for label, force in (("warm_driver_s", False), ("warm_ray_s", True)):
            shutil.rmtree(first.path)
            t0 = time.time()
            again = build_datasets(cfg, wd, force_ray=force)
            out[label] = round(time.time() - t0, 2)
            assert again.stats["segments_translated"] == 0, again.stats
        out["warm_driver_fraction"] = round(out["warm_driver_s"] / out["first_s"], 4)
        out["warm_ray_fraction"] = round(out["warm_ray_s"] / out["first_s"], 4)
    return out


def qa_rates(n_benign: int, n_eval: int) -> dict:
    from pipelines.translate import build_datasets

    with tempfile.TemporaryDirectory() as d:
        wd = Path(d)
        over = ["ft_langs=[es,pt]", "eval_langs=[es,pt]", f"data.benign.n={n_benign}",
                f"data.eval.n_harmful={n_eval}", "data.eval.safe=[xstest_safe]", f"data.eval.n_safe={n_eval}",
                "translate.batch_size=32", "translate.concurrency=2"]
        t0 = time.time()
        res = build_datasets(_cfg(wd, over), wd)
        return {"seconds": round(time.time() - t0, 1), "qa": res.manifest["qa"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_translate.json")
    ap.add_argument("--rows", type=int, default=120)
    ap.add_argument("--rebuild-rows", type=int, default=120)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--qa-benign", type=int, default=200)
    ap.add_argument("--qa-eval", type=int, default=100)
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    import ray

    results: dict = {"machine": f"{os.cpu_count()} cores", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for attempt in range(3):  # a loaded shared machine sometimes times out the first start
        try:
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            if attempt == 2:
                raise
            time.sleep(5)
    results["load_avg_start"] = os.getloadavg()
    if "throughput" not in args.skip:
        results["throughput"] = [throughput(args.rows, 16, c) for c in args.concurrency]
        print(json.dumps(results["throughput"], indent=1), flush=True)
    if "rebuild" not in args.skip:
        results["rebuild"] = rebuild(args.rebuild_rows, 16)
        print(json.dumps(results["rebuild"], indent=1), flush=True)
    if "qa" not in args.skip:
        results["qa"] = qa_rates(args.qa_benign, args.qa_eval)
        print(json.dumps(results["qa"], indent=1), flush=True)
    results["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
