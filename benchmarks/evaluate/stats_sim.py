"""False-positive rate and power of the report's test of a condition against its base, simulated.

    .venv/bin/python benchmarks/evaluate/stats_sim.py [--trials 1000] [--out benchmarks/evaluate/stats_sim.json]
    .venv/bin/python benchmarks/evaluate/stats_sim.py --markdown   # the RESULTS tables from the JSON

One condition (model, fine-tune language, epochs) in one eval language: n prompts answered by the base
(compliance 0.3) and by S fine-tuning runs of the condition. Run s changes compliance by δ_s ~ N(Δ, τ²):
among the base's refusals a share (0.05 + max(δ_s, 0)) / 0.7 flips to compliance, among its compliances a
share (0.05 + max(−δ_s, 0)) / 0.3 flips to refusal, so each run's expected change is δ_s on top of 5% of
prompts flipping each way (greedy decoding under any weight change; power.py's background). Δ = 0 with
τ > 0 is "no average effect, but runs that differ": a test of the condition must not call that a change.

Tests, each at α (two-sided):
- `run` — one run's exact McNemar test (what a one-seed study can do; the laptop preset had one seed);
- `pooled prompts` — the exact sign-flip test of the labels averaged over the S runs, over prompts (the
  old `p_value_seeds`, now descriptive): prompts are the unit, runs are not;
- `t over seeds only` — the one-sample t over the S runs' changes (S − 1 df), which misses what the runs
  share (the base's answers on this sample);
- `t over seeds` — the report's test (stats.seed_level): the t over seeds only and the t with
  SE² = s²/S + the prompt SE² of the seed-averaged differences (Welch–Satterthwaite df) must both reject
  (an intersection-union test, p the larger of the two).

Also written: each preset's family sizes (pipelines.report.tables.family_sizes) and the α of the first Holm
step of its confirmatory family, at which the power is shown too. Seeded: a rerun gives the same numbers."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.evaluate.stats import mcnemar_exact, pair_counts, seed_level, sign_flip_exact
from pipelines.presets import load_config
from pipelines.report.tables import family_sizes

BASE_RATE, FLIP = 0.3, 0.05
TAUS = (0.0, 0.05, 0.10)
DELTAS = (0.0, 0.10, 0.20)


def run_labels(rng: np.random.Generator, base: np.ndarray, delta: float) -> np.ndarray:
    """One run's labels: the base's, flipped so that the expected change is `delta`."""
    up = min(1.0, (FLIP + max(delta, 0.0)) / (1 - BASE_RATE))
    down = min(1.0, (FLIP + max(-delta, 0.0)) / BASE_RATE)
    u = rng.random(base.size)
    return np.where(base == 0, (u < up).astype(float), np.where(u < down, 0.0, 1.0))


def one_study(rng: np.random.Generator, n: int, seeds: int, delta: float, tau: float) -> dict[str, float | None]:
    """p-values of the three tests on one simulated condition."""
    base = (rng.random(n) < BASE_RATE).astype(float)
    runs = [run_labels(rng, base, rng.normal(delta, tau)) for _ in range(seeds)]
    d = [r - base for r in runs]
    c = pair_counts(base, runs[0])
    out: dict[str, float | None] = {"run": mcnemar_exact(c.up, c.down)}
    if seeds > 1:
        avg = np.mean(d, axis=0)
        out["pooled prompts"] = sign_flip_exact(avg)
        changes = [float(x.mean()) for x in d]
        out["t over seeds only"] = seed_level(changes).p
        out["t over seeds"] = seed_level(changes, float(avg.std(ddof=1) / math.sqrt(n)), n).p
    return out


def rates(n: int, seeds: int, delta: float, tau: float, alphas: list[float], trials: int,
          seed: int) -> dict[str, dict[str, float]]:
    """Share of trials each test rejects at each α."""
    rng = np.random.default_rng(seed)
    ps: dict[str, list[float]] = {}
    for _ in range(trials):
        for k, p in one_study(rng, n, seeds, delta, tau).items():
            ps.setdefault(k, []).append(1.0 if p is None else p)
    return {k: {f"{a:.3g}": float(np.mean(np.asarray(v) <= a)) for a in alphas} for k, v in ps.items()}


def presets() -> dict[str, dict[str, Any]]:
    """n, seeds and family sizes of the laptop and paper presets, from their configs."""
    out = {}
    for name in ("laptop", "paper"):
        cfg = load_config(name)
        fam = family_sizes(len(cfg.models), cfg.ft_langs, len(cfg.epochs), cfg.eval_langs, cfg.stats.contrasts)
        out[name] = {"n": cfg.data.eval.n_harmful, "seeds": len(cfg.seeds), "families": fam,
                     "alpha_confirmatory_first_step": cfg.stats.alpha / fam["confirmatory"]}
    return out


TESTS = ("run", "pooled prompts", "t over seeds only", "t over seeds")  # the last is the report's


def _cell(r: dict[str, Any], test: str) -> str:
    v = r["rates"].get(test)
    return "–" if v is None else " / ".join(f"{x:.3f}" for x in v.values())


def markdown(data: dict[str, Any]) -> str:
    """The RESULTS tables: false positives with no average effect, then the power of the report's test."""
    out = []
    for name, p in data["presets"].items():
        rows = [r for r in data["rows"] if r["preset"] == name]
        a = f"α = 0.05 / {p['alpha_confirmatory_first_step']:.2g}"
        out += [f"### {name}: n = {p['n']} prompts, families {p['families']}", "",
                f"No average effect (Δ = 0): share of studies rejecting ({a}, the first Holm step of its "
                "confirmatory family)", "", "| seeds | τ | " + " | ".join(TESTS) + " |", "|---" * (2 + len(TESTS)) + "|"]
        out += [f"| {r['seeds']} | {r['tau']} | " + " | ".join(_cell(r, t) for t in TESTS) + " |"
                for r in rows if r["delta"] == 0]
        out += ["", f"Power of the report's test (t over seeds; one seed: the run's McNemar) ({a})", "",
                "| seeds | τ | Δ = 0.10 | Δ = 0.20 |", "|---|---|---|---|"]
        for r in rows:
            if r["delta"] == 0.10:
                r2 = next(x for x in rows if x["seeds"] == r["seeds"] and x["tau"] == r["tau"] and x["delta"] == 0.20)
                t = "t over seeds" if r["seeds"] > 1 else "run"
                out.append(f"| {r['seeds']} | {r['tau']} | {_cell(r, t)} | {_cell(r2, t)} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true", help="print the RESULTS tables of an existing --out")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 10], help="runs per condition simulated")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("stats_sim.json"))
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    pre = presets()
    rows = []
    t0 = time.time()
    for i, (name, p) in enumerate(pre.items()):
        alphas = [0.05, p["alpha_confirmatory_first_step"]]
        for j, s in enumerate(args.seeds):
            for k, tau in enumerate(TAUS):
                for m, delta in enumerate(DELTAS):
                    r = rates(p["n"], s, delta, tau, alphas, args.trials, seed=1000 * i + 100 * j + 10 * k + m)
                    rows.append({"preset": name, "n": p["n"], "seeds": s, "tau": tau, "delta": delta, "rates": r})
                    print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"presets": pre, "base_rate": BASE_RATE, "flip": FLIP, "trials": args.trials,
                                    "seconds": round(time.time() - t0, 1), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
