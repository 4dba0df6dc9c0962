"""Does the trained judge need the prompt? The multilingual trained judge (trained-e5) with and without the
prompt's embedding among its features, measured where it saw neither the answer nor its prompt: XSTest's
human labels held out by source model and prompt fold, each fold holding XSTest's contrast pairs whole
(labels.contrast_groups), in English and machine-translated into es and pt (as written: how the laptop
judges), and the hand-labelled laptop answers (never trained on, judged through the language policy).

    SAFEDRIFT_CACHE=/tmp/sdc .venv/bin/python benchmarks/evaluate/prompt_feature.py [--langs en,es,pt,zh]

Writes benchmarks/evaluate/prompt_feature.json (figures only)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from pipelines.evaluate.judges import make_judge  # noqa: E402
from pipelines.evaluate.judges.validity import judge_validity  # noqa: E402

KEEP = ("lang", "condition", "source", "n", "kappa", "kappa_ci_low", "kappa_ci_high", "accuracy", "rate_error",
        "non_answer_recall", "heldout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--langs", default="en,es,pt,zh")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("prompt_feature.json"))
    args = ap.parse_args()
    langs = args.langs.split(",")
    out = {"command": " ".join(sys.argv), "variants": {}}
    for name, options in (("with prompt", {"prompt_feature": True}), ("without prompt", {})):
        t0 = time.time()
        rows = judge_validity(make_judge("trained-e5", **options), options, langs, ["apertium"], back=False,
                              back_translate=False)
        out["variants"][name] = {"options": options, "seconds": round(time.time() - t0, 1),
                                 "rows": [{k: r.get(k) for k in KEEP} for r in rows]}
        for r in rows:
            k = "n/a" if r["kappa"] is None else f"{r['kappa']:.3f}"
            print(f"{name:15s} {r['lang']} {r['condition']:12s} {r['source']:24s} n={r['n']:5d} κ={k}", flush=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
