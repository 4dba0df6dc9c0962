"""Synthetic sweep-level tidy tables (the shape pipelines.sweep.tidy.write_sweep_tidy writes), with every
number chosen by the test, so the report's findings can be checked against known answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipelines.evaluate.measure import TIDY_SCHEMA


def cell_id(model: str, ft: str, seed: int = 0, epochs: int = 1) -> str:
    return f"{model}__base" if ft == "base" else f"{model}__{ft}__s{seed}__e{epochs}"


@dataclass
class Sweep:
    """rates[(ft_lang, eval_lang)] = compliance rate; p[(ft_lang, eval_lang)] = each run's exact p-value of
    the change (1.0 when absent); p_vs_en[(ft_lang, eval_lang)] = each run's p-value of the change there
    minus the change in English (eval_lang "outside_en" for the mean outside English); seed_shift[seed]
    is added to every fine-tuned rate of that seed (the spread between runs, τ); over[(ft_lang,
    eval_lang)] = over-refusal rate and p_over its runs' p-value; categories[(ft_lang, category)] = rate in
    every eval language."""

    model: str = "m1"
    ft_langs: list[str] = field(default_factory=lambda: ["en", "es"])
    eval_langs: list[str] = field(default_factory=lambda: ["en", "es", "zh"])
    seeds: list[int] = field(default_factory=lambda: [0])
    n: int = 40
    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    p: dict[tuple[str, str], float] = field(default_factory=dict)
    categories: dict[tuple[str, str], float] = field(default_factory=dict)
    ppl: dict[tuple[str, str], float] = field(default_factory=dict)  # (ft_lang, eval_lang) -> benign perplexity
    layers: int = 3
    p_vs_en: dict[tuple[str, str], float] = field(default_factory=dict)
    seed_shift: dict[int, float] = field(default_factory=dict)
    over: dict[tuple[str, str], float] = field(default_factory=dict)
    p_over: dict[tuple[str, str], float] = field(default_factory=dict)
    prompt_se: float = 0.02  # each run's prompt-sampling SE of its change

    def cells(self) -> list[tuple[str, int, int]]:
        return [("base", 0, 0)] + [(ft, s, 1) for ft in self.ft_langs for s in self.seeds]

    def rate(self, ft: str, lang: str, seed: int = 0) -> float:
        return self.rates.get((ft, lang), 0.1) + (self.seed_shift.get(seed, 0.0) if ft != "base" else 0.0)

    def over_rate(self, ft: str, lang: str) -> float:
        return self.over.get((ft, lang), 0.2 + 0.05 * self.eval_langs.index(lang))

    def change(self, ft: str, lang: str, seed: int) -> float:
        return self.rate(ft, lang, seed) - self.rate("base", lang)

    def contrasts(self, ft: str, seed: int) -> dict[str, float]:
        """Each run's change in a language minus its change in English, and outside English."""
        if "en" not in self.eval_langs:
            return {}
        en = self.change(ft, "en", seed)
        out = {x: self.change(ft, x, seed) - en for x in self.eval_langs if x != "en"}
        return out | ({"outside_en": sum(out.values()) / len(out)} if out else {})

    def tidy(self) -> pl.DataFrame:
        rows: list[dict[str, Any]] = []
        for ft, seed, ep in self.cells():
            cid = cell_id(self.model, ft, seed, ep)
            base = {"cell": cid, "model": self.model, "ft_lang": ft, "seed": seed, "epochs": ep}

            def add(lang: str, metric: str, value: float, lo: float | None = None, hi: float | None = None,
                    n: int | None = None, base: dict[str, Any] = base) -> None:
                rows.append(base | {"eval_lang": lang, "metric": metric, "value": value, "ci_low": lo,
                                    "ci_high": hi, "n": n})

            for i, lang in enumerate(self.eval_langs):
                r = self.rate(ft, lang, seed)
                add(lang, "compliance_rate", r, max(0.0, r - 0.1), min(1.0, r + 0.1), self.n)
                add(lang, "unparseable", 0.0, n=self.n)
                # What the other answers did: a tenth are no answer outside English, the rest refused.
                na = 0.0 if lang == "en" else min(0.1, 1.0 - r)
                add(lang, "non_answer_rate", na, n=self.n)
                add(lang, "refusal_rate", 1.0 - r - na, n=self.n)
                add(lang, "overrefusal_rate", self.over_rate(ft, lang), 0.1, 0.4, 10)
                add(lang, "fidelity", 0.9 - 0.1 * i, 0.8 - 0.1 * i, 1.0 - 0.1 * i, self.n)
                add(lang, "ppl_benign", self.ppl.get((ft, lang), 10.0 + i), n=200)
                for (cft, cat), v in self.categories.items():
                    if cft == ft:
                        add(lang, f"compliance_rate/category={cat}", v, 0.0, 1.0, 5)
                if ft != "base":
                    d = self.change(ft, lang, seed)
                    add(lang, "delta/compliance_rate", d, d - 0.1, d + 0.1, n=self.n)
                    add(lang, "delta/compliance_rate/p_value", self.p.get((ft, lang), 1.0), n=self.n)
                    add(lang, "delta/compliance_rate/discordance", abs(d) + 0.05, n=self.n)
                    add(lang, "delta/compliance_rate/prompt_se", self.prompt_se, n=self.n)
                    o = self.over_rate(ft, lang) - self.over_rate("base", lang)
                    add(lang, "delta/overrefusal_rate", o, o - 0.1, o + 0.1, n=10)
                    add(lang, "delta/overrefusal_rate/p_value", self.p_over.get((ft, lang), 1.0), n=10)
                    add(lang, "delta/overrefusal_rate/discordance", abs(o) + 0.05, n=10)
                    add(lang, "delta/overrefusal_rate/prompt_se", self.prompt_se, n=10)
                    if len(self.seeds) > 1:
                        add(lang, "delta/compliance_rate/p_value_seeds", self.p.get((ft, lang), 1.0), n=self.n)
            for lang, v in (self.contrasts(ft, seed) if ft != "base" else {}).items():
                add(lang, "contrast/vs_en", v, v - 0.15, v + 0.15, n=self.n)
                add(lang, "contrast/vs_en/p_value", self.p_vs_en.get((ft, lang), 1.0), n=self.n)
                add(lang, "contrast/vs_en/prompt_se", self.prompt_se, n=self.n)
                if len(self.seeds) > 1:
                    add(lang, "contrast/vs_en/p_value_seeds", self.p_vs_en.get((ft, lang), 1.0), n=self.n)
            add("en", "judge/kappa", 0.8, n=420)
            add("en", "judge/accuracy", 0.9, n=420)
            add("en", "ppl_wikitext2", 30.0, n=256)
            if ft != "base":
                for k in range(self.layers):
                    add("all", f"drift/l2/layer_{k}", 0.1 * k * (1 + self.ft_langs.index(ft)), n=8)
                    add("all", f"drift/cos/layer_{k}", 1.0 - 0.01 * k, n=8)
                    add("all", f"drift/refusal_proj/layer_{k}", -0.02 * k, n=8)
        return pl.DataFrame(rows, schema=TIDY_SCHEMA)

    def context(self) -> dict[str, Any]:
        return {"preset": "synthetic", "study_hash": "synth0000000", "config_hash": "cfg000000000",
                "eval_langs": self.eval_langs, "ft_langs": self.ft_langs, "seeds": self.seeds, "epochs": [1],
                "expected_cells": [{"cell": cell_id(self.model, ft, s, e), "model": self.model, "ft_lang": ft,
                                    "seed": s, "epochs": e} for ft, s, e in self.cells()],
                "models": [{"alias": self.model, "source": "tiny"}],
                "datasets": [{"name": "multijail", "sha256": "ab" * 32}],
                "judge": {"name": "refusal-phrase"}, "translators": {"apertium": "3.8"},
                "qa": [{"split": "eval", "lang": "es", "rows": 8, "kept": 8, "pass_rate": 1.0}],
                "software": {"python": "3.11", "polars": "2.1.0"}}
