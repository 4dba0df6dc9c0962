"""The report page: one self-contained HTML file (figures embedded as base64 PNG, no scripts, no
external resources), so it opens from disk, from an MLflow artifact view or as an e-mail attachment.
Every value is escaped; the page shows aggregates only, never a prompt or an answer."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipelines.report.findings import Finding

CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .45rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.2rem 0;border-bottom:1px solid #eee;padding-bottom:.8rem}img{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#444}.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5rem 1rem}
.note{color:#666;font-size:.9rem}.finding{margin:0 0 1.2rem}.finding h3{margin-bottom:.3rem}
code{font-size:.85em}details{margin:.5rem 0}"""


@dataclass
class FigureOut:
    stem: str  # file name without extension: <stem>.png and <stem>.svg
    title: str
    caption: str
    png: bytes


@dataclass
class Skipped:
    title: str
    reason: str


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return '<td class="num">n/a</td>' if v != v else f'<td class="num">{v:.3f}</td>'
    if isinstance(v, bool) or v is None:
        return f"<td>{'' if v is None else esc(v)}</td>"
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{esc(v)}</td>"


def table(df: pl.DataFrame, max_rows: int = 60) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.head(max_rows).iter_rows())
    more = f'<p class="note">{df.height - max_rows} more rows in the CSV.</p>' if df.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _figure(f: FigureOut) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{esc(f.stem)}"><img src="data:image/png;base64,{data}" alt="{esc(f.title)}" '
            f'data-file="{esc(f.stem)}.png"><figcaption><b>{esc(f.title)}.</b> {esc(f.caption)} '
            f'Files: <a href="{esc(f.stem)}.png">PNG</a>, <a href="{esc(f.stem)}.svg">SVG</a>.</figcaption></figure>')


def _finding(f: Finding) -> str:
    tab = table(f.table, 20) if f.table is not None and f.table.height else ""
    return (f'<div class="finding" id="finding-{esc(f.key)}"><h3>{esc(f.title)}</h3>'
            f"<p>{esc(f.summary)}</p>{tab}</div>")


def _kv(items: list[tuple[str, Any]]) -> str:
    return "<table><tbody>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items) + \
        "</tbody></table>"


def judge_tables(judge: dict[str, Any]) -> str:
    """The judge's validity per eval language (each judge), back-translation as it happened, and the two
    judges' agreement: measured, never the config's word."""
    out = []
    for key, title in (("validity", "Judge agreement with people per eval language"),
                       ("validity2", "Second judge's agreement with people per eval language")):
        v = judge.get(key)
        if isinstance(v, pl.DataFrame) and v.height:
            un = v.filter(~pl.col("validated"))["eval_lang"].to_list()
            note = (f'<p class="warn">Unvalidated: {esc(", ".join(un))} — no labelled answers reach these '
                    "languages here (no translator route, no file in judge.labels); their rates rest on a judge "
                    "whose agreement with people there is unknown.</p>") if un else ""
            out.append(f"<h4>{esc(title)}</h4><p class=\"note\">Cohen's κ (complied vs not, with its 95% "
                       "bootstrap interval) and accuracy on labelled answers the judge never trained on, in the way "
                       "each language is judged (back-translated or as written): hand-labelled answers of small "
                       "models like the study's where there are any — with rate_error, the judge's compliance "
                       "rate minus the hand labels', and non_answer_recall — else XSTest's human labels of large "
                       "models' answers (held out by source model and contrast pair; xstest_kappa beside).</p>"
                       + table(v) + note)
    rd = judge.get("read")
    if isinstance(rd, pl.DataFrame) and rd.height:
        out.append("<h4>The judge on this study's own answers, read by a developer</h4><p class=\"note\">Answers "
                   "of this study found identical (cell, prompt, language, text) to ones a developer read and labelled "
                   "(pipelines/evaluate/judges/read/), pooled over the cells that gave them: Cohen's κ of complied "
                   "vs not with its 95% bootstrap interval, the compliance rate read and judged and their "
                   "difference (rate_error), and the read non-answers the judge found (all: every language).</p>"
                   + table(rd))
    bt = judge.get("back_translation")
    if isinstance(bt, pl.DataFrame) and bt.height:
        failed = int(bt["bt_failed"].fill_null(0).sum())
        out.append("<h4>Back-translation, as done</h4><p class=\"note\">Share of each cell's answers actually "
                   f"translated to English before judging, the route, and translator failures ({failed} in all; "
                   "a failed answer is judged as written and flagged).</p>" + table(bt, 40))
    bw = judge.get("between")
    if isinstance(bw, pl.DataFrame) and bw.height:
        out.append("<h4>Agreement between the two judges</h4><p class=\"note\">Per eval language over every "
                   "cell's answers: share of labels the two judges agree on, mean Cohen's κ between them over "
                   "cells, and disagreements.</p>" + table(bw))
    return "".join(out)


def provenance(ctx: dict[str, Any], judge: dict[str, Any]) -> str:
    """The provenance section: hashes, models, data sets, judge, translators + QA, seeds, software."""
    parts = [_kv([("preset", ctx.get("preset")), ("config hash", ctx.get("config_hash")),
                  ("study hash", ctx.get("study_hash")), ("data sets hash", ctx.get("datasets_hash")),
                  ("fine-tune languages", ", ".join(ctx.get("ft_langs") or [])),
                  ("eval languages", ", ".join(ctx.get("eval_langs") or [])),
                  ("seeds", ", ".join(map(str, ctx.get("seeds") or [])) or "unknown"),
                  ("epochs", ", ".join(map(str, ctx.get("epochs") or [])) or "unknown"),
                  *[(f"fine-tune {k}", v) for k, v in (ctx.get("finetune") or {}).items()],
                  ("MLflow parent run", (ctx.get("mlflow") or {}).get("parent_run_id")),
                  ("MLflow tracking URI", (ctx.get("mlflow") or {}).get("tracking_uri")),
                  ("context written", ctx.get("created_at"))])]
    if ctx.get("models"):
        parts.append("<h3>Models</h3>" + table(pl.DataFrame(ctx["models"])))
    if ctx.get("datasets"):
        parts.append("<h3>Data sets (sha256 verified on load)</h3>" + table(pl.DataFrame(ctx["datasets"])))
    j = ctx.get("judge") or {}
    kappa = judge.get("kappa")
    agreement = ("not measured" if kappa is None else
                 f"Cohen's κ = {kappa:.3f}, accuracy = {judge.get('accuracy', float('nan')):.3f} on "
                 f"{judge.get('heldout_n')} held-out human-labelled answers")
    parts.append("<h3>Judge</h3>" + _kv([("judge", j.get("name", "unknown")),
                                         ("back-translation asked for (config)", j.get("back_translate")),
                                         ("agreement with humans (English)", agreement)]) + judge_tables(judge))
    if ctx.get("translators") or ctx.get("qa"):
        parts.append("<h3>Translators and translation QA</h3>" +
                     _kv([(k, v) for k, v in (ctx.get("translators") or {}).items()]) +
                     (table(pl.DataFrame(ctx["qa"])) if ctx.get("qa") else "") +
                     f'<p class="note">pass rate = rows the QA policy keeps / rows; policy: {esc(ctx.get("qa_policy"))}</p>')
    if ctx.get("deviations"):
        parts.append("<h3>Where this preset differs from the study</h3><ul>"
                     + "".join(f"<li>{esc(d)}</li>" for d in ctx["deviations"]) + "</ul>")
    for m in ctx.get("models") or []:
        if isinstance(m, dict) and isinstance(m.get("aligned"), dict):
            a = m["aligned"]
            parts.append(f"<h3>How {esc(m.get('alias'))} was aligned</h3><p>{esc(a.get('statement'))}</p>"
                         + _kv([(k, v) for k, v in (a.get("recipe") or {}).items()]))
    if ctx.get("software"):
        parts.append("<h3>Software</h3>" + _kv(list(ctx["software"].items())))
    if ctx.get("config"):
        import json

        parts.append("<details><summary>Full configuration (secrets masked)</summary><pre>"
                     + esc(json.dumps(ctx["config"], indent=2, sort_keys=True)) + "</pre></details>")
    return "".join(parts)


def summary_section(summary: dict[str, list[str]]) -> str:
    """The plain-language summary the report opens with (report/summary.py)."""
    items = "".join(f"<h3>{esc(k.capitalize())}</h3><ul>{''.join(f'<li>{esc(x)}</li>' for x in v)}</ul>"
                    for k, v in summary.items() if v)
    return f'<section id="summary"><h2>Summary</h2>{items}</section>' if items else ""


def page(ctx: dict[str, Any], coverage: Finding, findings: list[Finding], figures: list[FigureOut],
         skipped: list[Skipped], compliance: pl.DataFrame, judge: dict[str, Any], files: list[str],
         summary: dict[str, list[str]] | None = None) -> str:
    title = f"safedrift report: {ctx.get('preset') or ctx.get('study_hash') or 'sweep'}"
    cov_cls = "warn" if coverage.facts.get("missing") or coverage.facts.get("gaps") else "note"
    cov_tab = table(coverage.table) if coverage.table is not None else ""
    skip = "".join(f"<li><b>{esc(s.title)}</b>: {esc(s.reason)}</li>" for s in skipped)
    skip_html = f'<div class="note"><p>Figures not drawn:</p><ul>{skip}</ul></div>' if skipped else ""
    links = " · ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in files)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head><body>
<h1>{esc(title)}</h1>
<p>How benign fine-tuning in one language changed the model's compliance with unsafe prompts in every eval
language. Each answer refused, complied (attempted the request, even partly or badly) or was no answer at all
(the prompt echoed, a phrase repeated, gibberish); compliance rate = share of the answers that complied, as
labelled by the judge (over parseable labels; 95% Wilson intervals), beside the other two shares. Changes are against the same model before fine-tuning: each
fine-tuning run (seed) is paired with the base prompt by prompt, and a condition (model, fine-tune language,
epochs) is tested across its runs by a t over seeds, with the spread between seeds (τ) beside each change. The
claims are the confirmatory contrasts (Holm–Bonferroni); every condition × eval language is screened with
Benjamini–Hochberg, which the heatmap's hatching shows; the summary's "the tests" names each family and its size
(raw and adjusted p-values are both shown). Eval languages where the judge's agreement with people could not be measured are
marked <b>unvalidated</b>.</p>
{summary_section(summary or {})}
<section id="coverage"><h2>Coverage</h2><div class="{cov_cls}"><p>{esc(coverage.summary)}</p>{cov_tab}</div></section>
<section id="findings"><h2>Findings</h2><p class="note">Computed from the tidy metrics table when this report
was written.</p>{"".join(_finding(f) for f in findings)}</section>
<section id="figures"><h2>Figures</h2>{"".join(_figure(f) for f in figures)}{skip_html}</section>
<section id="tables"><h2>Compliance table</h2>{table(compliance)}
<p class="note">All tables as CSV and Parquet: {links}</p></section>
<section id="provenance"><h2>Provenance</h2>{provenance(ctx, judge)}</section>
</body></html>
"""
