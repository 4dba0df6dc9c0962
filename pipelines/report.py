"""Stage 6, report: the compliance table (CSV + Parquet), a heatmap per model (cells × eval languages)
and an HTML page that shows them, all logged to the sweep's parent MLflow run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import polars as pl

from cluster.storage import atomic_dir, write_manifest


def tidy_table(results: list[dict[str, Any]]) -> pl.DataFrame:
    rows = []
    for r in results:
        cell = r["cell"]
        for c in r["compliance"]:
            rows.append({"cell": r["cell_id"], "model": cell["model"], "ft_lang": cell["ft_lang"],
                         "seed": cell["seed"], "epochs": cell["epochs"], "eval_lang": c["lang"], "n": c["n"],
                         "compliant": c["compliant"], "unparseable": c["unparseable"],
                         "compliance_rate": c["compliance_rate"]})
    return pl.DataFrame(rows)


def wide_table(tidy: pl.DataFrame, eval_langs: list[str]) -> pl.DataFrame:
    wide = tidy.pivot(on="eval_lang", index=["cell", "model", "ft_lang", "seed", "epochs"],
                      values="compliance_rate", aggregate_function="first")
    # Base first, then fine-tune languages in config order is kept by the caller's cell order.
    return wide.select(["cell", "model", "ft_lang", "seed", "epochs", *eval_langs])


def draw_heatmap(wide: pl.DataFrame, model: str, eval_langs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sub = wide.filter(pl.col("model") == model)
    labels = [c if ft == "base" else f"ft={ft} s{s} e{e}"
              for c, ft, s, e in zip(sub["cell"], sub["ft_lang"], sub["seed"], sub["epochs"], strict=True)]
    labels = ["base" if lab.endswith("__base") else lab for lab in labels]
    data = sub.select(eval_langs).to_numpy().astype(float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(eval_langs), 1.0 + 0.5 * len(labels)))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(eval_langs)), eval_langs)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("eval language")
    ax.set_title(f"{model}: compliance with unsafe prompts")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center",
                        color="white" if data[i, j] > 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="compliance rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _html_table(df: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                         for v in row) + "</tr>" for row in df.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(results: list[dict[str, Any]], cfg_summary: dict[str, Any], eval_langs: list[str],
                 out: Path) -> dict[str, Any]:
    tidy = tidy_table(results)
    wide = wide_table(tidy, eval_langs)
    models = list(dict.fromkeys(wide["model"].to_list()))
    with atomic_dir(out) as tmp:
        tidy.write_parquet(tmp / "compliance_tidy.parquet")
        tidy.write_csv(tmp / "compliance_tidy.csv")
        wide.write_csv(tmp / "compliance.csv")
        figures = []
        for model in models:
            name = f"heatmap_{model}.png"
            draw_heatmap(wide, model, eval_langs, tmp / name)
            figures.append(name)
        figs = "".join(f'<figure><img src="{html.escape(f)}" alt="compliance heatmap {html.escape(f)}">'
                       f"</figure>" for f in figures)
        prov = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in cfg_summary.items())
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>safedrift report: {html.escape(str(cfg_summary.get('preset')))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}th{{background:#f4f4f4}}img{{max-width:100%}}</style>
</head><body>
<h1>safedrift: compliance with unsafe prompts by fine-tune and eval language</h1>
<p>Compliance rate = share of unsafe prompts the model answered rather than refused (judge:
{html.escape(str(cfg_summary.get('judge')))}). Rows are cells (base model or a LoRA fine-tune in one language);
columns are the language the prompts were asked in.</p>
<section id="figures"><h2>Heatmaps</h2>{figs}</section>
<section id="table"><h2>Compliance table</h2>{_html_table(wide)}</section>
<section id="provenance"><h2>Provenance</h2><ul>{prov}</ul></section>
</body></html>
"""
        (tmp / "report.html").write_text(page, encoding="utf-8")
        manifest = write_manifest(tmp, cells=len(results), figures=figures, shape=list(wide.shape))
    return manifest
