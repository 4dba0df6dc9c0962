"""The extra evaluation sets a cell needs besides the unsafe prompts, built once per config and shared
by every cell (workdir/evalsets/<hash>/, parquet, atomic):

- safe prompts per eval language for over-refusal: XSTest's safe prompts (a spread subset across its
  prompt types) translated from English through the translator registry; where no route exists,
  the benign OASST prompts in that language when the mirror has them (hplt_oasst_test); else none;
- held-out benign examples per eval language for perplexity: rows of the benign sources *after* the
  first data.benign.n (which fine-tuning uses), in the language's native source when the config has one,
  else translated from English; none when no route exists."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import write_parquet_atomic
from pipelines.config import StudyConfig, stable_hash

log = logging.getLogger(__name__)


def _spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n rows spread over the whole list (XSTest is ordered by prompt type)."""
    if n >= len(rows):
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def _translate(texts: list[str], lang: str, prefer: list[str], cache: dict[str, Any]) -> list[str] | None:
    from pipelines.registries.translators import NoRouteError, make_translator, plan_route

    try:
        route = plan_route("en", lang, prefer)
    except (NoRouteError, KeyError):
        return None
    if isinstance(route, str):
        return None
    cur = list(texts)
    for hop in route:
        if hop.translator not in cache:
            cache[hop.translator] = make_translator(hop.translator)
        live = [i for i, t in enumerate(cur) if t.strip()]
        done = cache[hop.translator].translate([cur[i] for i in live], hop.src, hop.tgt) if live else []
        for i, t in zip(live, done, strict=True):
            cur[i] = t
    return cur


def safe_prompts(cfg: StudyConfig, cache: dict[str, Any]) -> pl.DataFrame:
    from pipelines.registries import datasets

    ev = cfg.evaluate
    rows: list[dict[str, Any]] = []
    if ev.n_safe == 0:
        return pl.DataFrame(schema={"id": pl.String, "lang": pl.String, "category": pl.String,
                                    "prompt": pl.String, "prompt_en": pl.String, "source": pl.String})
    en = _spread(list(datasets.load(ev.safe_source)), ev.n_safe)
    for lang in cfg.eval_langs:
        texts = [r["prompt"] for r in en] if lang == "en" else _translate([r["prompt"] for r in en], lang,
                                                                           ev.translate_prefer, cache)
        if texts is not None:
            rows += [{"id": r["id"], "lang": lang, "category": str(r.get("category", "")), "prompt": t,
                      "prompt_en": r["prompt"], "source": f"{ev.safe_source}" + ("" if lang == "en" else "+mt")}
                     for r, t in zip(en, texts, strict=True)]
        elif f"oasst_{lang}" in datasets.DATASETS.names():
            rows += [{"id": r["id"], "lang": lang, "category": "oasst", "prompt": r["prompt"], "prompt_en": None,
                      "source": "oasst"} for r in datasets.load(f"oasst_{lang}", limit=ev.n_safe)]
        else:
            log.warning("no safe prompts for %s: no translation route and no OASST file", lang)
    return pl.DataFrame(rows, schema={"id": pl.String, "lang": pl.String, "category": pl.String,
                                      "prompt": pl.String, "prompt_en": pl.String, "source": pl.String})


def heldout_benign(cfg: StudyConfig, cache: dict[str, Any]) -> pl.DataFrame:
    from pipelines.registries import datasets

    n_ft, k = cfg.data.benign.n, cfg.evaluate.n_benign_ppl
    rows: list[dict[str, Any]] = []
    if k == 0:
        return pl.DataFrame(schema={"lang": pl.String, "instruction": pl.String, "output": pl.String})

    def pairs(name: str) -> list[tuple[str, str]]:
        recs = list(datasets.load(name))[n_ft:n_ft + k]  # after the fine-tuning rows: never trained on
        return [((r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")), r["output"]) for r in recs]

    src = cfg.data.benign.source
    src_lang = datasets.DATASETS.get(src).lang if not src.startswith(("file:", "sorrybench:")) else "en"
    en_pairs = pairs(src)
    for lang in cfg.eval_langs:
        if lang in cfg.data.benign.native:
            got = pairs(cfg.data.benign.native[lang])
        elif lang == src_lang:
            got = en_pairs
        else:
            ins = _translate([a for a, _ in en_pairs], lang, cfg.evaluate.translate_prefer, cache)
            outs = _translate([b for _, b in en_pairs], lang, cfg.evaluate.translate_prefer, cache) if ins else None
            got = list(zip(ins, outs, strict=True)) if ins and outs else []
        rows += [{"lang": lang, "instruction": a, "output": b} for a, b in got]
    return pl.DataFrame(rows, schema={"lang": pl.String, "instruction": pl.String, "output": pl.String})


def evalsets_key(cfg: StudyConfig) -> dict[str, Any]:
    return {"evaluate": cfg.evaluate.model_dump(mode="json"), "eval_langs": cfg.eval_langs,
            "benign": cfg.data.benign.model_dump(mode="json"), "version": 1}


def build_evalsets(cfg: StudyConfig, workdir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(safe prompts, held-out benign), cached by config hash; concurrent cells write the same bytes."""
    out = workdir / "evalsets" / stable_hash(evalsets_key(cfg))
    safe_p, benign_p = out / "safe.parquet", out / "benign_heldout.parquet"
    if safe_p.exists() and benign_p.exists():
        return pl.read_parquet(safe_p), pl.read_parquet(benign_p)
    cache: dict[str, Any] = {}
    safe, benign = safe_prompts(cfg, cache), heldout_benign(cfg, cache)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(safe, safe_p)
    write_parquet_atomic(benign, benign_p)
    return safe, benign
