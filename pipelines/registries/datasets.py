"""Data-set registry: name -> file in the public mirror (original URL, license, sha256) and a loader
that turns it into rows. Files resolve from SAFEDRIFT_DATA_DIR (default ../shared/data beside the repo)
or, where the network allows, from the original URL; the checksum is verified either way."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
Row = dict[str, Any]


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # benign | harmful | overrefusal | capability | judge_labels
    path: str  # relative to the mirror root
    url: str  # original location (repo @ commit : path)
    license: str
    sha256: str
    loader: Callable[[Path, DatasetSpec], list[Row]]
    lang: str = "en"
    description: str = ""


DATASETS: Registry[DatasetSpec] = Registry("data set")


def data_dir() -> Path:
    return Path(os.environ.get("SAFEDRIFT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@cache
def resolve(name: str) -> Path:
    """Local path of a data set's file, checksum verified. Cached per process: files are immutable."""
    spec = DATASETS.get(name)
    local = data_dir() / spec.path
    if not local.exists():
        local = _download(spec)
    digest = _sha256(local)
    if digest != spec.sha256:
        raise DataError(
            f"checksum mismatch for data set '{name}' at {local}: expected {spec.sha256}, got {digest}. "
            "The file is not the registered public version; restore it from the mirror."
        )
    return local


def _download(spec: DatasetSpec) -> Path:
    cache_dir = Path(os.environ.get("SAFEDRIFT_CACHE", Path.home() / ".cache" / "safedrift")) / "data"
    target = cache_dir / spec.path
    if target.exists():
        return target
    raw = spec.url.replace("/blob/", "/raw/")
    try:
        with urllib.request.urlopen(raw, timeout=30) as resp:  # noqa: S310 - fixed registry URL
            blob = resp.read()
    except OSError as exc:
        raise DataError(
            f"data set '{spec.name}' is not in the mirror {data_dir()} (looked for {spec.path}) and "
            f"downloading {raw} failed ({exc}). Set SAFEDRIFT_DATA_DIR to a folder holding the mirror."
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(blob)
    tmp.replace(target)
    return target


def load(name: str, limit: int | None = None) -> list[Row]:
    spec = DATASETS.get(name)
    rows = spec.loader(resolve(name), spec)
    return rows[:limit] if limit is not None else rows


def sha256_of(name: str) -> str:
    return DATASETS.get(name).sha256


# ---- loaders -------------------------------------------------------------------------------------

def _alpaca_json(path: Path, spec: DatasetSpec) -> list[Row]:
    return benign_rows(json.loads(path.read_text(encoding="utf-8")), spec.name, spec.lang)


def benign_rows(records: list[dict[str, Any]], source: str, lang: str) -> list[Row]:
    """Alpaca shape (instruction, input, output) or Dolly shape (instruction, context, response)."""
    rows, bad = [], []
    for i, rec in enumerate(records):
        instruction = rec.get("instruction")
        output = rec.get("output", rec.get("response"))
        if not isinstance(instruction, str) or not isinstance(output, str) or not instruction.strip():
            bad.append(i + 1)
            continue
        context = rec.get("input", rec.get("context")) or ""
        rows.append({"id": f"{source}/{i}", "source": source, "category": str(rec.get("category") or "general"),
                     "lang": lang, "instruction": instruction, "input": str(context), "output": output})
    if bad:
        raise DataError(f"{source}: {len(bad)} malformed records (need instruction and output/response): "
                        f"record numbers {bad[:20]}{' …' if len(bad) > 20 else ''}")
    return rows


def _multijail(path: Path, spec: DatasetSpec) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8-sig", newline="") as fh:  # the file starts with a BOM
        for rec in csv.DictReader(fh):
            tags = ast.literal_eval(rec["tags"]) if rec["tags"].startswith("[") else [rec["tags"]]
            refs = {lang: rec[lang] for lang in ("zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
                    if rec.get(lang)}
            rows.append({"id": f"multijail/{rec['id']}", "source": "multijail", "category": tags[0] if tags else "",
                         "lang": "en", "prompt": rec["en"], "refs": refs})
    return rows


def _advbench(path: Path, spec: DatasetSpec) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as fh:
        goals = [r[0] for r in csv.reader(fh) if r and r[0].strip()]
    return [{"id": f"advbench/{i}", "source": "advbench", "category": "", "lang": "en", "prompt": g, "refs": {}}
            for i, g in enumerate(goals)]


def _harmbench(path: Path, spec: DatasetSpec) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [{"id": f"harmbench/{r['BehaviorID']}", "source": "harmbench", "category": r["SemanticCategory"],
                 "lang": "en", "prompt": r["Behavior"], "refs": {}}
                for r in csv.DictReader(fh) if r["FunctionalCategory"] == "standard"]


def _strongreject(path: Path, spec: DatasetSpec) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [{"id": f"strongreject/{i}", "source": "strongreject", "category": r["category"], "lang": "en",
                 "prompt": r["forbidden_prompt"], "refs": {}} for i, r in enumerate(csv.DictReader(fh))]


def _xstest_safe(path: Path, spec: DatasetSpec) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [{"id": f"xstest/{r['id']}", "source": "xstest", "category": r["type"], "lang": "en",
                 "prompt": r["prompt"], "refs": {}}
                for r in csv.DictReader(fh) if not r["type"].startswith("contrast_")]


def _wikitext(path: Path, spec: DatasetSpec) -> list[Row]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [{"id": f"wikitext2/{i}", "text": ln} for i, ln in enumerate(lines)]


_GH = "https://github.com"
for _spec in [
    DatasetSpec("alpaca_en", "benign", "benign/alpaca_en_demo_999.json",
                f"{_GH}/hiyouga/LLaMA-Factory/blob/ff6d4d12/data/alpaca_en_demo.json", "CC BY-NC 4.0",
                "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318", _alpaca_json, "en",
                "999 Alpaca-style instruction/response pairs, English"),
    DatasetSpec("alpaca_zh", "benign", "benign/alpaca_zh_demo_1000.json",
                f"{_GH}/hiyouga/LLaMA-Factory/blob/ff6d4d12/data/alpaca_zh_demo.json", "CC BY-NC 4.0",
                "d5a4be46ae70d23a461ffc16048069324c0865ee9aa0c8730e21ac4b65ea0f08", _alpaca_json, "zh",
                "1,000 Alpaca-style pairs written in Chinese (not a translation of alpaca_en)"),
    DatasetSpec("multijail", "harmful", "harmful/MultiJail.csv",
                f"{_GH}/DAMO-NLP-SG/multilingual-safety-for-LLMs/blob/577ac511/data/MultiJail.csv", "MIT",
                "2798ed6fe470b80b1f486976e0fb3baa3ce008e62b6ca0abbf2e1ed5b1dfb355", _multijail, "en",
                "315 unsafe prompts with human translations into zh it vi ar ko th bn sw jv"),
    DatasetSpec("advbench", "harmful", "harmful/advbench_harmful_behaviors.csv",
                f"{_GH}/LLM-Tuning-Safety/LLMs-Finetuning-Safety/blob/8a3b38f1/llama2/safety_evaluation/data/harmful_behaviors.csv",
                "MIT", "ddbbd16619070d1ddba479dda1acc603abc1a222d797fe015f20669a996d7388", _advbench, "en",
                "520 harmful goals"),
    DatasetSpec("harmbench", "harmful", "harmful/harmbench_behaviors_text_all.csv",
                f"{_GH}/busycalibrating/AdversariaLLM/blob/f9709392/data/behavior_datasets/harmbench_behaviors_text_all.csv",
                "MIT", "2745611872be3b2eab141e39bb328b8c1140dc3cd8d0a49da6174260d9ccbfb9", _harmbench, "en",
                "HarmBench standard behaviours"),
    DatasetSpec("strongreject", "harmful", "harmful/strongreject_dataset.csv",
                f"{_GH}/busycalibrating/AdversariaLLM/blob/f9709392/data/behavior_datasets/strongreject_dataset.csv",
                "MIT", "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381", _strongreject, "en",
                "313 forbidden prompts in 6 categories"),
    DatasetSpec("xstest_safe", "overrefusal", "overrefusal/xstest_prompts.csv",
                f"{_GH}/paul-rottger/exaggerated-safety/blob/d7bb5bd7/xstest_prompts.csv", "CC BY 4.0",
                "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a", _xstest_safe, "en",
                "XSTest's 250 safe prompts (contrast_ unsafe prompts left out)"),
    DatasetSpec("wikitext2", "capability", "capability/wikitext2_raw_test.txt",
                f"{_GH}/Tylogi/TyloQuant/blob/7989d038/data/wikitext-2-raw/wiki.test.raw", "CC BY-SA 3.0",
                "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c", _wikitext, "en",
                "WikiText-2 raw test split"),
]:
    DATASETS.add(_spec.name, _spec)
