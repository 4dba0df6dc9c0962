"""How much of the harmful / benign distinction a recipe's data can teach, read off the base model itself:
a logistic-regression probe on SmolLM2-135M-Instruct's last prompt-token state (layers 24, 27, 30 of 30),
trained on a candidate recipe's refusal prompts against its benign prompts, scored on the dev proxy of
recipe_search.py (never the eval rows). Its AUC is what a linear read-out of that data reaches out of
distribution; recipe_search.py's `auc_en` / `auc_zh` (the built model's first-token refusal probability) is
what training reached. One JSON line per data variant.

    SAFEDRIFT_CACHE=/tmp/sdc_dev .venv/bin/python benchmarks/aligned_base/probe.py"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_search import auc, dev_sets  # noqa: E402

from pipelines.align.data import lookalike_prompts, select_data, training_rows, user_text  # noqa: E402
from pipelines.align.recipe import REFUSALS, AlignRecipe  # noqa: E402
from pipelines.registries.model_store import model_dir  # noqa: E402
from pipelines.registries.models import ModelSpec  # noqa: E402

LAYERS = (24, 27, 30)


class States:
    """Last prompt-token hidden states per prompt (chat template, generation prompt), computed once."""

    def __init__(self, alias: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model_dir(alias)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.cache: dict[str, Any] = {}
        self.torch = torch

    def __call__(self, prompts: list[str]) -> Any:
        import numpy as np

        for p in dict.fromkeys(prompts):
            if p in self.cache:
                continue
            ids = self.tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
            with self.torch.inference_mode():
                hs = self.model(**ids, output_hidden_states=True).hidden_states
            self.cache[p] = np.stack([hs[layer][0, -1].float().numpy() for layer in LAYERS])
        return np.stack([self.cache[p] for p in prompts])


def recipe_prompts(**fields: Any) -> tuple[list[str], list[str]]:
    """A recipe's refusal prompts and benign prompts (helpful rows + the prompts the base model answers), as
    training_rows asks them."""
    r = AlignRecipe.of(ModelSpec("probe", "aligned", "llama", base="smollm2-135m-instruct", align=fields))
    d = select_data(r)
    rows = training_rows(r, d, [""] * len(lookalike_prompts(r)))  # answers do not matter here, only prompts
    harm = [user_text(x) for x in rows if x["output"] in REFUSALS]
    return harm, [user_text(x) for x in rows if x["output"] not in REFUSALS]


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "n_chat 40": {"n_chat": 40},
    "match_openings": {"match_openings": True},
    "as_question 0.5": {"as_question": 0.5},
    "match_openings + as_question 0.5": {"match_openings": True, "as_question": 0.5},
    "+ strongreject (180 refusals)": {"harmful": ["harmbench", "advbench", "strongreject"], "n_harmful": 180},
    "+ strongreject, match_openings, as_question 0.5, n_chat 40": {
        "harmful": ["harmbench", "advbench", "strongreject"], "n_harmful": 180, "match_openings": True,
        "as_question": 0.5, "n_chat": 40},
}


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    states = States("smollm2-135m-instruct")
    dev = {k: states(v) for k, v in dev_sets().items()}
    for name, fields in VARIANTS.items():
        harm, ben = recipe_prompts(**fields)
        xh, xb = states(harm), states(ben)
        row: dict[str, Any] = {"variant": name, "n": [len(harm), len(ben)]}
        for i, layer in enumerate(LAYERS):
            x = np.concatenate([xh[:, i], xb[:, i]])
            y = np.r_[np.ones(len(xh)), np.zeros(len(xb))]
            clf = LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced").fit(x, y)
            s = {k: clf.decision_function(v[:, i]).tolist() for k, v in dev.items()}
            row[f"layer{layer}"] = {"auc_en": round(auc(s["mj_en"], s["xstest_dev"] + s["oasst_dev"]), 3),
                                    "auc_zh": round(auc(s["mj_zh"], s["oasst_dev_zh"]), 3)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
