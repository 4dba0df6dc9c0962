"""The report's figures (matplotlib, no display): per model a compliance heatmap and a heatmap of the
change against the base model with non-significant changes hatched; over-refusal against compliance;
drift per layer per fine-tune language; safety change against capability change; language fidelity.
Each builder returns None when it has nothing to draw, so the report says why instead of showing an
empty plot. Figures are built with the object API (no pyplot state), which is safe in any thread."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pipelines.report.tables import ALPHA, BASE, SCREENING_NAME, Cells

# Reproducible SVGs: no random ids, no timestamp, so a rerun writes the same bytes.
_RC = {"svg.hashsalt": "safedrift"}
_META = {"svg": {"Date": None}, "png": {"Software": None}}
NA_COLOUR = "#d9d9d9"


def save(fig: Figure, directory: Path, stem: str, dpi: int = 110) -> bytes:
    """Writes <stem>.png and <stem>.svg; returns the PNG bytes (embedded in the HTML)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata=_META["png"])
        # The layout is in inches, the same for both formats: keep the one the PNG computed rather than
        # solving it again (that solve is about half of a figure's cost).
        fig.set_layout_engine("none")
        fig.savefig(directory / f"{stem}.svg", format="svg", metadata=_META["svg"])
    png = buf.getvalue()
    (directory / f"{stem}.png").write_bytes(png)
    return png


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _new(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def lang_colours(cells: Cells) -> dict[str, Any]:
    """One colour per fine-tune language, stable across figures; the base model is black."""
    cmap = matplotlib.colormaps["tab10"]
    langs = list(dict.fromkeys(c["ft_lang"] for c in cells.present if c["ft_lang"] != BASE))
    return {BASE: "black", **{lang: cmap(i % 10) for i, lang in enumerate(langs)}}


def _size(rows: int, cols: int) -> tuple[float, float]:
    # Wide enough for the two-line titles even with one or two eval languages.
    return max(4.8, 2.2 + 0.95 * max(cols, 1)), 1.5 + 0.55 * max(rows, 1)


def _ticks(ax: Any, grid: dict[str, Any]) -> None:
    # Column labels carry the judge's κ per eval language, or "unvalidated" (tables.Cells.lang_label).
    ax.set_xticks(range(len(grid["cols"])), grid.get("col_labels") or grid["cols"])
    ax.set_yticks(range(len(grid["rows"])), grid["rows"])
    ax.set_xlabel("eval language")


def compliance_heatmap(grid: dict[str, Any], model: str) -> Figure | None:
    """Rows: base and fine-tune languages; columns: eval languages; colour: compliance rate. Each
    entry shows the rate and, below it, its 95% CI (one seed) or its range over seeds."""
    if not grid["rows"] or all(v is None for row in grid["value"] for v in row):
        return None
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in grid["value"]], dtype=float)
    fig = _new(*_size(*data.shape))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad=NA_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(data), vmin=0, vmax=1, cmap=cmap, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = grid["value"][i][j]
            if v is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555")
                continue
            lo, hi, k = grid["low"][i][j], grid["high"][i][j], grid["seeds"][i][j]
            sub = "" if lo is None else (f"\n[{lo:.2f}, {hi:.2f}]" if k == 1 else f"\n{lo:.2f}–{hi:.2f} ({k} seeds)")
            ax.text(j, i, f"{v:.2f}{sub}", ha="center", va="center", fontsize=7.5,
                    color="white" if v > 0.6 else "black")
    _ticks(ax, grid)
    ax.set_title(f"{model}: compliance with unsafe prompts")
    fig.colorbar(im, ax=ax, label="compliance rate", shrink=0.9)
    return fig


def delta_heatmap(grid: dict[str, Any], model: str) -> Figure | None:
    """Change of compliance against the base model; a change not significant in the screening family
    (the grid's `family`, Benjamini–Hochberg over every condition × eval language, as the text's
    screening) is greyed out and hatched, so only the significant ones stand out."""
    if not grid["rows"] or all(v is None for row in grid["value"] for v in row):
        return None
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in grid["value"]], dtype=float)
    lim = max(0.05, float(np.nanmax(np.abs(data))))
    fig = _new(*_size(*data.shape))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=NA_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(data), vmin=-lim, vmax=lim, cmap=cmap, aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v, p, sig = grid["value"][i][j], grid["p"][i][j], grid["significant"][i][j]
            if v is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555")
                continue
            raw = grid.get("p_raw", grid["p"])[i][j]
            ptxt = "p n/a" if p is None else f"p={_p(raw)}\nadj {_p(p)}"
            tau = (grid.get("tau") or [[None] * (j + 1)] * (i + 1))[i][j]
            ptxt += "" if tau is None else f"\nτ {tau:.2f}"  # the between-seed spread beside the change
            if not sig:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=(0.85, 0.85, 0.85, 0.75),
                                       edgecolor="#888", hatch="///", linewidth=0))
            ax.text(j, i, f"{v:+.2f}\n{ptxt}" + ("" if sig else "\nn.s."), ha="center", va="center",
                    fontsize=7.5, color="black", fontweight="bold" if sig else "normal")
    _ticks(ax, grid)
    family = grid.get("family", f"{SCREENING_NAME}-adjusted p ≥ {ALPHA}")
    ax.set_title(f"{model}: change in compliance vs base\n(hatched: not significant, {family})")
    fig.colorbar(im, ax=ax, label="Δ compliance (fine-tuned − base)", shrink=0.9)
    return fig


def refusal_plane(plane: pl.DataFrame, cells: Cells) -> Figure | None:
    """Each cell × eval language as a point: compliance with unsafe prompts (x) against refusal of
    safe ones (y). Bottom right is exaggerated compliance, top left exaggerated refusal."""
    if plane.height == 0:
        return None
    colours = lang_colours(cells)
    fig = _new(6.4, 4.8)
    ax = fig.add_subplot()
    ax.axhspan(0.5, 1.05, xmin=0, xmax=0.5, color="#fde0dd", alpha=0.4, lw=0)
    ax.axhspan(-0.05, 0.5, xmin=0.5, xmax=1, color="#fee8c8", alpha=0.5, lw=0)
    ax.text(0.01, 0.52, "exaggerated refusal", fontsize=8, color="#a50f15", va="bottom")
    ax.text(1.04, 0.48, "exaggerated compliance", fontsize=8, color="#b35806", ha="right", va="top")
    models = list(dict.fromkeys(plane["model"]))
    markers = "osD^vP*X"
    label_points = plane.height <= 40
    seen: set[str] = set()
    for r in plane.iter_rows(named=True):
        x, y = r["compliance_rate"], r["overrefusal_rate"]
        xerr = [[max(0.0, x - r["ci_low"])], [max(0.0, r["ci_high"] - x)]] if r["ci_low"] is not None else None
        yerr = ([[max(0.0, y - r["over_ci_low"])], [max(0.0, r["over_ci_high"] - y)]]
                if r["over_ci_low"] is not None else None)
        lab = r["ft_lang"] if r["ft_lang"] not in seen else None
        seen.add(r["ft_lang"])
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[models.index(r["model"]) % len(markers)],
                    color=colours.get(r["ft_lang"], "grey"), ecolor="#999", elinewidth=0.7, capsize=2,
                    markersize=6, alpha=0.85, label=None if lab is None else ("base" if lab == BASE else f"ft {lab}"))
        if label_points:
            ax.annotate(r["eval_lang"], (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("compliance with unsafe prompts")
    ax.set_ylabel("over-refusal of safe prompts")
    title = "Over-refusal vs compliance (cell × eval language, 95% CIs)"
    if len(models) > 1:
        title += "\nmarkers: " + ", ".join(f"{markers[i % len(markers)]} {m}" for i, m in enumerate(models))
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="cell", title_fontsize=7)
    return fig


def drift_lines(drift: pl.DataFrame, model: str, cells: Cells) -> Figure | None:
    """Per layer, the hidden-state change against the base model (L2) and its projection on the base
    model's refusal direction, one line per fine-tuned cell coloured by its fine-tune language."""
    d = drift.filter(pl.col("model") == model)
    kinds = [k for k in ("l2", "refusal_proj", "cos") if k in set(d["kind"])][:2]
    if d.height == 0 or not kinds:
        return None
    colours = lang_colours(cells)
    fig = _new(4.0 * len(kinds) + 1.6, 3.6)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    names = {"l2": "‖Δ mean hidden state‖ (L2)", "refusal_proj": "Δ projected on refusal direction",
             "cos": "cosine(base, fine-tuned)"}
    for ax, kind in zip(axes, kinds, strict=True):
        seen: set[str] = set()
        for _, g in d.filter(pl.col("kind") == kind).group_by("cell", maintain_order=True):
            g = g.sort("layer")
            ft = g["ft_lang"][0]
            ax.plot(g["layer"], g["value"], marker="o", markersize=3, color=colours.get(ft, "grey"),
                    label=None if ft in seen else f"ft {ft}", alpha=0.85)
            seen.add(ft)
        if kind == "refusal_proj":
            ax.axhline(0, color="#666", lw=0.6)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_title(names[kind])
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{model}: drift from the base model per layer")
    return fig


def safety_vs_capability(sc: pl.DataFrame, stats: dict[str, Any], cells: Cells) -> Figure | None:
    """Safety change (Δ compliance) against capability change (Δ log perplexity), with the
    correlation, its CI and n in the title."""
    if sc.height == 0:
        return None
    import numpy as np

    colours = lang_colours(cells)
    fig = _new(6.0, 4.6)
    ax = fig.add_subplot()
    ax.axhline(0, color="#888", lw=0.6)
    ax.axvline(0, color="#888", lw=0.6)
    seen: set[str] = set()
    for r in sc.iter_rows(named=True):
        ft = r["ft_lang"]
        ax.scatter(r["capability_change"], r["safety_change"], color=colours.get(ft, "grey"), s=28,
                   edgecolor="black" if r["significant"] else "none", linewidth=0.8,
                   label=None if ft in seen else f"ft {ft}")
        seen.add(ft)
    x, y = sc["capability_change"].to_numpy(), sc["safety_change"].to_numpy()
    if stats.get("pearson") is not None and np.std(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, slope * xs + icpt, color="#444", lw=0.8, ls="--")

    def fmt(v: float | None, ci: tuple[float, float] | None) -> str:
        if v is None:
            return "n/a"
        return f"{v:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")

    ax.set_title(f"Safety change vs capability change (n = {stats.get('n', sc.height)})\n"
                 f"Pearson r {fmt(stats.get('pearson'), stats.get('pearson_ci'))} (95% CI, Fisher z)\n"
                 f"Spearman ρ {fmt(stats.get('spearman'), stats.get('spearman_ci'))} (95% CI, bootstrap)")
    ax.set_xlabel("capability change: Δ log perplexity vs base (> 0: worse)")
    ax.set_ylabel("safety change: Δ compliance vs base")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
              title="black edge: significant", title_fontsize=7)
    return fig


def fidelity_heatmap(fid: pl.DataFrame, cells: Cells) -> Figure | None:
    """Share of answers in the language they were asked in, per cell × eval language."""
    if fid.height == 0 or fid["fidelity"].drop_nulls().len() == 0:
        return None
    import numpy as np

    rows = [c for c in cells.order if c in set(fid["cell"])]
    langs = cells.eval_langs
    look = {(r["cell"], r["eval_lang"]): r for r in fid.iter_rows(named=True)}
    data = np.full((len(rows), len(langs)), math.nan)
    for i, c in enumerate(rows):
        for j, lang in enumerate(langs):
            r = look.get((c, lang))
            if r is not None and r["fidelity"] is not None:
                data[i, j] = r["fidelity"]
    fig = _new(*_size(len(rows), len(langs)))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Greens"].with_extremes(bad=NA_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(data), vmin=0, vmax=1, cmap=cmap, aspect="auto")
    for i, c in enumerate(rows):
        for j, lang in enumerate(langs):
            r = look.get((c, lang))
            txt = "n/a" if math.isnan(data[i, j]) else f"{data[i, j]:.2f}\nn={r['n']}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7.5,
                    color="white" if data[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(langs)), [cells.lang_label(x) for x in langs])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("eval language")
    ax.set_title("Language fidelity: share of answers in the eval language")
    fig.colorbar(im, ax=ax, label="fidelity", shrink=0.9)
    return fig
