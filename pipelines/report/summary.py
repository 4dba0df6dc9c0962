"""The report's opening: in plain language, what changed, by how much, how sure (power at the findings' α
from the measured discordance and τ), which tests and families, and how far the judge can be trusted in
each language — computed from the same tables as the rest of the report."""

from __future__ import annotations

from typing import Any

import polars as pl

from pipelines.report.power import mde_paired, mde_seeds, seed_plan
from pipelines.report.tables import other_model_labels

ASSUMED_TAU = 0.10  # with one seed τ is unmeasured: the repo's alignment seeds moved English compliance 0.225–0.45
TARGET = 0.10  # the change the report says how many prompts and seeds would detect


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.0%}" if x else "±0%"


def _ci(r: dict[str, Any]) -> str:
    return "" if r.get("ci_low") is None else f", 95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"


def _tau(r: dict[str, Any]) -> str:
    return "one run" if (r.get("seeds") or 0) <= 1 else f"τ {r['tau']:.2f} over {r['seeds']} seeds"


def what_changed(cond: pl.DataFrame, con: pl.DataFrame | None = None) -> list[str]:
    """The confirmatory contrasts that hold (Holm), then per condition the screening changes (BH) with τ
    beside each; one sentence where nothing does."""
    if cond.height == 0:
        return ["No fine-tuned cell has been evaluated against its base yet."]
    out = []
    if con is not None and con.height:
        sig = con.filter(pl.col("significant"))
        out.append(f"Confirmatory ({con.height} contrasts, Holm–Bonferroni): " + (
            "; ".join(f"{r['condition']}: {r['what']} {_pct(r['estimate'])}{_ci(r)} ({_tau(r)}, adjusted p "
                      f"{r['p_adj']:.3g})" for r in sig.iter_rows(named=True)) if sig.height else "none holds") + ".")
    sig = cond.filter(pl.col("significant"))
    if sig.height == 0:
        big = cond.filter(pl.col("delta").is_not_null()).sort(pl.col("delta").abs(), descending=True).row(0, named=True)
        out.append(f"Screening: no change in compliance is significant after Benjamini–Hochberg over all {cond.height} "
                   f"condition × language tests. The largest change measured was {_pct(big['delta'])} "
                   f"({big['condition']}, {big['eval_lang']}{_ci(big)}; {_tau(big)}).")
    for (label,), g in sig.group_by("condition", maintain_order=True):
        parts = [f"{r['eval_lang']} {r['base_rate']:.0%} → {r['ft_rate']:.0%} ({_pct(r['delta'])}{_ci(r)}; {_tau(r)}; "
                 f"adjusted p {r['p_adj']:.3g})" for r in g.iter_rows(named=True)]
        out.append(f"Screening, {label}: compliance with unsafe prompts changed in " + ", ".join(parts) + ".")
    if int(cond["seeds"].max() or 0) <= 1:
        out.append("A first look: every condition has one seed, so each change is that of one fine-tuning run, "
                   "and training randomness is in no test (another run of the same fine-tune may move "
                   "differently). Run with several seeds (the laptop preset has three) before drawing a conclusion.")
    return out


def _pooled_tau(cond: pl.DataFrame) -> float | None:
    """√(mean τ²) over the conditions with several seeds; None with one seed everywhere."""
    t = cond.filter(pl.col("seeds") > 1)["tau"].drop_nulls()
    return float((t ** 2).mean() ** 0.5) if t.len() else None


def _shared(g: pl.DataFrame, n: int, seeds: int, psi: float) -> float:
    """The per-prompt variance the runs share (the base's answers), from the measured prompt SE of the
    seed-averaged differences less the runs' own part: n·SE² − (ψ − Δ²)/S, never below 0."""
    se = g["prompt_se"].drop_nulls() if "prompt_se" in g.columns else pl.Series([], dtype=pl.Float64)
    if se.len() == 0:
        return 0.0
    d = float(g["delta"].mean() or 0.0)
    return max(0.0, n * float((se ** 2).mean()) - max(psi - d * d, 0.0) / seeds)


def _power_line(model: str, lang: str, g: pl.DataFrame, tau: float | None, alpha: float, m: int) -> str:
    n, seeds = int(g["n"].min()), int(g["seeds"].max())
    psi = float(g["discordance"].mean())
    shared = _shared(g, n, seeds, psi)
    t = tau if tau is not None else ASSUMED_TAU
    how = f"τ {t:.2f}" + (" assumed: one seed measures no spread" if tau is None else " measured")
    level = f"α = {alpha:.2g}, the first Holm step over {m} confirmatory tests, power 80%"
    if seeds > 1:
        mde = mde_seeds(n, seeds, psi, t, alpha, shared=shared)
        what = (f"the condition's test detects ({level}) a change of ≥ {mde:.2f}" if mde else
                "the condition's test detects no change")
        head = f"{model} in {lang}: n = {n} prompts, {seeds} seeds, measured discordance {psi:.2f}, {how}: {what}"
    else:
        up = mde_paired(n, float(g["base_rate"].mean()), psi / 2, alpha)
        what = f"one run's exact test detects ({level}) a rise of ≥ {up:.2f}" if up else "one run's test detects no rise"
        head = f"{model} in {lang}: n = {n} prompts, one seed, measured discordance {psi:.2f}, {how}: {what}"
    plan = seed_plan(TARGET, psi, t, alpha, shared=shared)
    need = (f"a change of {TARGET:.2f} needs {plan[0]} seeds × {plan[1]} prompts" if plan else
            f"no plan up to 30 seeds × 1,000 prompts detects {TARGET:.2f}")
    return f"{head}; with this τ and discordance, {need}."


def how_sure(cond: pl.DataFrame, comp: pl.DataFrame, con: pl.DataFrame | None = None,
             alpha: float = 0.05) -> list[str]:
    """The smallest change the findings' test detects per model × eval language, at the α the findings
    use (the first Holm step of the confirmatory family), from the measured discordance and τ; and how
    many seeds and prompts would detect a change of 0.10."""
    if cond.height == 0:
        return []
    m = max(1, con.height if con is not None else 1)
    lines = []
    for (model,), gm in cond.group_by("model", maintain_order=True):
        tau = _pooled_tau(gm)
        for (lang,), g in gm.group_by("eval_lang", maintain_order=True):
            if g["discordance"].drop_nulls().len() and g["n"].drop_nulls().len():
                lines.append(_power_line(model, lang, g, tau, alpha / m, m))
    if lines:
        lines.append("A change smaller than these, not found significant, is not evidence that nothing changed.")
    return lines


def statistics(families: list[dict[str, Any]], cond: pl.DataFrame) -> list[str]:
    """What was tested, how, and in which family: the same families the findings and the figures use."""
    if not families:
        return []
    out = ["Unit: the fine-tuning run. A condition (model, fine-tune language, epochs) is compared with its base "
           "by the mean of its seeds' paired changes (each seed: the same prompts before and after). It counts as "
           "changed only when the change holds across runs — a t-test over seeds, S − 1 degrees of freedom, τ the "
           "between-seed SD — and with the prompt sample's noise counted too — a t with the prompt SE of the "
           "seed-averaged differences added (Welch–Satterthwaite df): the p-value is the larger of the two, the "
           "interval the hull of theirs. Each seed's own exact McNemar test "
           "and Newcombe interval are descriptive detail (deltas.csv). Seeds are pooled before testing, never "
           "counted as hypotheses. Rates carry 95% Wilson intervals."]
    out += [f"{f['family'][0].upper() + f['family'][1:]} family: {f['method']} over {f['size']} tests at α = {f['alpha']} — "
            f"{f['what']}." for f in families]
    if cond.height and int(cond["seeds"].max() or 0) <= 1:
        out.append("One seed per condition: the t over seeds cannot run, so each condition is tested by its one "
                   "run's exact McNemar test — the change of that fine-tuning run.")
    return out


RATE_ERROR_WARN = 0.10  # the bar for a compliance rate read from the judge


def _trust(r: dict[str, Any]) -> str:
    """One language's agreement: κ with its interval, and the rate error where hand labels measured it."""
    if r.get("kappa") is None:
        text = f"{r['eval_lang']} κ n/a (the labels hold one outcome only)"
    else:
        ci = (f" [{r['kappa_ci_low']:.2f}, {r['kappa_ci_high']:.2f}]"
              if r.get("kappa_ci_low") is not None and r.get("kappa_ci_high") is not None else "")
        text = f"{r['eval_lang']} κ {r['kappa']:.2f}{ci}"
    return text + (f", rate error {r['rate_error']:+.2f}" if r.get("rate_error") is not None else "")


def read_trust(read: pl.DataFrame | None) -> list[str]:
    """The judge on this study's own answers read by a developer (report.tables.read_agreement)."""
    if read is None or read.height == 0:
        return []
    rows = {r["eval_lang"]: r for r in read.iter_rows(named=True)}
    pooled = rows.pop("all")
    out = [f"On {pooled['n']} of this study's own answers read by a developer (found among its answers by "
           "cell, prompt, language and text; the labels are kept by hash in pipelines/evaluate/judges/read/), the judge "
           f"agrees with the reading as follows: {_trust(pooled | {'eval_lang': 'pooled'})}; "
           + ", ".join(f"{_trust(r)} (n {r['n']})" for r in rows.values()) + "."]
    off = [r for r in rows.values() if round(abs(r.get("rate_error") or 0.0), 2) > RATE_ERROR_WARN]
    if off:
        out.append("On these answers the judge's compliance rate is off the reading by more than "
                   f"{RATE_ERROR_WARN:.2f} in " + ", ".join(f"{r['eval_lang']} ({r['rate_error']:+.2f})" for r in off)
                   + ": read those languages' compliance as " + ("a lower bound." if all(
                       r["rate_error"] < 0 for r in off) else "uncertain by that much."))
    return out


def judge_trust(validity: pl.DataFrame, ctx: dict[str, Any] | None = None,
                read: pl.DataFrame | None = None) -> list[str]:
    if validity.height == 0:
        return ["The judge's agreement with people was not measured for this study."]
    ok = validity.filter(pl.col("validated"))
    out = []
    if ok.height:
        out.append("The judge agrees with people (Cohen's κ of complied vs not, on labelled answers it never "
                   "trained on: small models' answers labelled by hand where there are any, else XSTest's) as "
                   "follows: " + ", ".join(_trust(r) for r in ok.iter_rows(named=True)) + ".")
        off = [r for r in ok.iter_rows(named=True) if abs(r.get("rate_error") or 0.0) > RATE_ERROR_WARN]
        if off:
            out.append("Read compliance with care in " + ", ".join(
                f"{r['eval_lang']} (the judge's rate was {r['rate_error']:+.2f} off the hand labels')" for r in off)
                + f": more than {RATE_ERROR_WARN:.2f} off on the hand-labelled answers.")
        if labelled := other_model_labels(ctx):
            studied = [m.get("alias") for m in (ctx or {}).get("models") or [] if isinstance(m, dict)]
            out.append(f"The hand-labelled answers are {', '.join(labelled)}'s, not {', '.join(studied)}'s: the "
                       "agreement above is on another model's answers and may not carry over to this one's"
                       + ("; the figures on this study's own answers below are the ones that apply to it."
                          if read is not None and read.height else
                          "; label a sample of this study's answers (safedrift labels sample) and give them as "
                          "judge.labels to check the judge on them."))
    out += read_trust(read)
    bad = validity.filter(~pl.col("validated"))["eval_lang"].to_list()
    if bad:
        out.append(f"Unvalidated: {', '.join(bad)} — no labelled answers in that language reach the judge, so its "
                   "labels there are not checked against people (add your own with judge.labels).")
    return out


def base_statements(ctx: dict[str, Any]) -> list[str]:
    return [m["aligned"]["statement"] for m in ctx.get("models") or []
            if isinstance(m, dict) and isinstance(m.get("aligned"), dict) and m["aligned"].get("statement")]


def summary(ctx: dict[str, Any], cond: pl.DataFrame, comp: pl.DataFrame, validity: pl.DataFrame,
            con: pl.DataFrame | None = None, families: list[dict[str, Any]] | None = None,
            stats: dict[str, Any] | None = None, read: pl.DataFrame | None = None) -> dict[str, list[str]]:
    alpha = float((stats or {}).get("alpha", 0.05))
    return {"what changed": what_changed(cond, con), "how sure": how_sure(cond, comp, con, alpha),
            "the tests": statistics(families or [], cond), "the judge": judge_trust(validity, ctx, read),
            "the base model": base_statements(ctx), "differences from the study": list(ctx.get("deviations") or [])}
