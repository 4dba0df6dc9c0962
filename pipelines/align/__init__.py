"""A locally aligned base model: a chat model with a safety LoRA merged in, built once (by `safedrift
prepare`, or on first use) and cached in the model store like any converted model.

Why: SmolLM2-135M-Instruct complies with most harmful requests as published, so a study of how benign
fine-tuning erodes refusal would have nothing to erode. The recipe gives it refusals learned in English
only — the study's question is how refusal learned mostly in English survives fine-tuning in other languages:

- refusals: English prompts of HarmBench and AdvBench (never MultiJail, the eval set), each answered by
  one of a few short, polite refusal templates (`recipe.REFUSALS`);
- helpful answers: Alpaca rows taken from the END of alpaca_en and alpaca_zh, answered with their own
  outputs, disjoint from the rows a study fine-tunes on (the first `data.benign.n`) and holds out (the next
  `evaluate.n_benign_ppl`): `check_disjoint` fails a config whose rows would reach them;
- look-alikes: benign prompts that look risky and are not (`recipe.LOOKALIKES`, written here: homonyms,
  safe targets, figurative language, definitions, history, safety advice, fiction), answered by the base
  model itself (greedy), so they teach "answer this" in the base's own words. None is an XSTest prompt (the
  eval's safe set and the trained judge's labels): a test checks that none shares most of its words with any.

Modules: recipe (the fields and texts), data (the rows, their key, check_disjoint), train (the LoRA),
build (the cached directory: `aligned_dir`, the model store's builder), describe (the report's sentence
and provenance). The study-level measurement on MultiJail with the project's judge, and the recipe
variants tried, are in benchmarks/aligned_base/RESULTS.md."""

from pipelines.align.build import aligned_dir
from pipelines.align.data import check_disjoint
from pipelines.align.describe import aligned_provenance
from pipelines.align.recipe import AlignRecipe

__all__ = ["AlignRecipe", "aligned_dir", "aligned_provenance", "check_disjoint"]
