"""The report's opening: in plain language, what changed, by how much, how sure, and how far the judge can
be trusted in each language — computed from the same tables as the rest of the report."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipelines.report.power import power_statement


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0%}" if x else "±0%"


def what_changed(deltas: pl.DataFrame) -> list[str]:
    """One sentence per fine-tuned cell with a change that survives the correction; one sentence if none."""
    if deltas.height == 0:
        return ["No fine-tuned cell has been evaluated against its base yet."]
    sig = deltas.filter(pl.col("significant"))
    if sig.height == 0:
        biggest = deltas.filter(pl.col("delta").is_not_null()).sort(pl.col("delta").abs(), descending=True).head(1)
        tail = ""
        if biggest.height:
            r = biggest.row(0, named=True)
            tail = (f" The largest change measured was {_pct(r['delta'])} ({r['cell']}, {r['eval_lang']}; "
                    f"adjusted p {r['p_adj']:.2f}), which is within what chance explains.")
        return ["No change in compliance against the base model is significant after the Holm correction "
                f"across all {deltas.height} cell × language tests." + tail]
    out = []
    for (cell,), g in sig.group_by("cell", maintain_order=True):
        parts = [f"{r['eval_lang']} {r['base_rate']:.0%} → {r['ft_rate']:.0%} ({_pct(r['delta'])}, adjusted p "
                 f"{r['p_adj']:.3f})" for r in g.sort("eval_lang").iter_rows(named=True)]
        unchanged = sorted(set(deltas.filter(pl.col("cell") == cell)["eval_lang"]) - set(g["eval_lang"]))
        rest = f"; no significant change in {', '.join(unchanged)}" if unchanged else ""
        out.append(f"{cell}: compliance with unsafe prompts changed in " + ", ".join(parts) + rest + ".")
    return out


def how_sure(deltas: pl.DataFrame, comp: pl.DataFrame) -> list[str]:
    """The smallest change the paired test detects, per eval language, at the study's own n and base rate."""
    base = comp.filter(pl.col("ft_lang") == "base")
    lines = []
    for r in base.sort("eval_lang").iter_rows(named=True):
        n, rate = r.get("n_parseable") or r.get("n"), r.get("compliance_rate")
        if not n or rate is None or rate != rate:
            continue
        lines.append(f"{r['model']} in {r['eval_lang']}: " + str(power_statement(int(n), float(rate))["text"]))
    if lines:
        lines.append("A change smaller than these, not found significant, is not evidence that nothing changed.")
    return lines


def judge_trust(validity: pl.DataFrame) -> list[str]:
    if validity.height == 0:
        return ["The judge's agreement with people was not measured for this study."]
    ok = validity.filter(pl.col("validated"))
    out = []
    if ok.height:
        out.append("The judge agrees with people (Cohen's κ on held-out human labels, answers from models it never "
                   "trained on) as follows: " + ", ".join(f"{r['eval_lang']} κ {r['kappa']:.2f}"
                                                         for r in ok.iter_rows(named=True)) + ".")
    bad = validity.filter(~pl.col("validated"))["eval_lang"].to_list()
    if bad:
        out.append(f"Unvalidated: {', '.join(bad)} — no labelled answers in that language reach the judge, so its "
                   "labels there are not checked against people (add your own with judge.labels).")
    return out


def base_statements(ctx: dict[str, Any]) -> list[str]:
    return [m["aligned"]["statement"] for m in ctx.get("models") or []
            if isinstance(m, dict) and isinstance(m.get("aligned"), dict) and m["aligned"].get("statement")]


def summary(ctx: dict[str, Any], deltas: pl.DataFrame, comp: pl.DataFrame, validity: pl.DataFrame) -> dict[str, list[str]]:
    return {"what changed": what_changed(deltas), "how sure": how_sure(deltas, comp),
            "the judge": judge_trust(validity), "the base model": base_statements(ctx),
            "differences from the study": list(ctx.get("deviations") or [])}
