"""Data-set registry: name -> file in the public mirror (original URL, license, sha256) and a loader
that turns it into rows. Files resolve from SAFEDRIFT_DATA_DIR (default ../shared/data beside the repo)
or, where the network allows, from the original URL; the checksum is verified either way."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cluster.storage import write_bytes_atomic
from pipelines.errors import DataError
from pipelines.hashing import file_sha256
from pipelines.layout import data_dir, downloads_cache
from pipelines.registries.languages import MULTIJAIL_LANGUAGES
from pipelines.registry import Registry

Row = dict[str, Any]

# User-supplied files: "file:/path/x.jsonl" (benign, Alpaca or Dolly shape; JSON, JSONL or Parquet) and
# "sorrybench:/path/question.jsonl" (SORRY-Bench is gated and may not be redistributed, so it is never in
# the mirror: users point at their own copy).
USER_PREFIXES = ("file:", "sorrybench:")


class Rows(list):  # type: ignore[type-arg]
    """A loader's rows plus the malformed input it skipped, as (file, line, reason) — reported in the
    data-set manifest rather than crashing a build over one bad line upstream."""

    def __init__(self, rows: list[Row] = (), malformed: list[dict[str, Any]] | None = None) -> None:  # type: ignore[assignment]
        super().__init__(rows)
        self.malformed: list[dict[str, Any]] = list(malformed or [])


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
    # Files that belong with the main one (e.g. the other languages of a multi-file set): name -> sha256.
    extra_sha256: dict[str, str] = field(default_factory=dict)


DATASETS: Registry[DatasetSpec] = Registry("data set")


@cache
def resolve(name: str) -> Path:
    """Local path of a data set's file, checksum verified. Cached per process: files are immutable."""
    spec = DATASETS.get(name)
    local = data_dir() / spec.path
    if not local.exists():
        local = _download(spec)
    digest = file_sha256(local)
    if digest != spec.sha256:
        raise DataError(
            f"checksum mismatch for data set '{name}' at {local}: expected {spec.sha256}, got {digest}. "
            "The file is not the registered public version; restore it from the mirror."
        )
    return local


def _download(spec: DatasetSpec) -> Path:
    """The data set's files fetched into the downloads cache (every file it needs: hplt_oasst's ten
    sibling languages too); the main file's path."""
    return fetch_files(spec, downloads_cache())


def files_of(spec: DatasetSpec) -> list[tuple[str, str, str]]:
    """(path under the mirror root, original URL, sha256) of every file the data set reads: the main
    file, then the siblings named in extra_sha256, which sit beside it upstream as in the mirror."""
    rel_dir, url_dir = spec.path.rsplit("/", 1)[0], spec.url.rsplit("/", 1)[0]
    return [(spec.path, spec.url, spec.sha256),
            *[(f"{rel_dir}/{name}", f"{url_dir}/{name}", sha) for name, sha in sorted(spec.extra_sha256.items())]]


def fetch_files(spec: DatasetSpec, root: Path) -> Path:
    """Every file of the data set under `root` (the mirror's layout), each downloaded from its original
    URL when absent and checked against its sha256 before it is kept; the main file's path. Used for the
    downloads cache and to stage the mirror onto a cluster's shared volume (infra/stage.py)."""
    for rel, url, sha in files_of(spec):
        target = root / rel
        if target.exists():
            continue
        raw = url.replace("/blob/", "/raw/")
        try:
            with urllib.request.urlopen(raw, timeout=30) as resp:  # noqa: S310 - fixed registry URL
                blob = resp.read()
        except OSError as exc:
            raise DataError(
                f"data set '{spec.name}' is not in the mirror {data_dir()} (looked for {spec.path}) and "
                f"downloading {raw} failed ({exc}). Set SAFEDRIFT_DATA_DIR to a folder holding the mirror."
            ) from None
        digest = hashlib.sha256(blob).hexdigest()
        if digest != sha:
            raise DataError(f"data set '{spec.name}': {raw} has sha256 {digest}, the registry expects {sha}; "
                            "the upstream file changed: restore the mirror copy (SAFEDRIFT_DATA_DIR)")
        write_bytes_atomic(target, blob)
    return root / spec.path


def load(name: str, limit: int | None = None) -> Rows:
    """Rows of a registered data set, or of a user file (``file:/p`` or ``sorrybench:/p``). The result
    is a list; its ``malformed`` attribute lists skipped input lines (file, line number, reason)."""
    if name.startswith(USER_PREFIXES):
        kind, path = _user_path(name)
        rows = _load_sorrybench(path) if kind == "sorrybench" else _load_user_benign(path)
    elif name == "sorrybench":
        raise DataError("SORRY-Bench is gated and may not be redistributed, so it is not in the mirror: "
                        "point at your own copy with sorrybench:/path/to/question.jsonl")
    else:
        spec = DATASETS.get(name)
        loaded = spec.loader(resolve(name), spec)
        rows = loaded if isinstance(loaded, Rows) else Rows(loaded)
    if limit is not None:
        rows = Rows(rows[:limit], rows.malformed)
    return rows


def sha256_of(name: str) -> str:
    if name.startswith(USER_PREFIXES):
        return file_sha256(_user_path(name)[1])
    return DATASETS.get(name).sha256


def _user_path(name: str) -> tuple[str, Path]:
    kind, _, raw = name.partition(":")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise DataError(f"{kind}: data file {path} does not exist (give {kind}:/absolute/path)")
    return kind, path


def _read_records(path: Path) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """(line number, record) pairs from JSON (a list), JSONL or Parquet; unparseable JSONL lines are
    returned as malformed with their line numbers instead of aborting the whole file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import polars as pl

        return list(enumerate(pl.read_parquet(path).to_dicts(), start=1)), []
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if not isinstance(data, list):
            raise DataError(f"{path}: a JSON data file must hold a list of records")
        return list(enumerate(data, start=1)), []
    if suffix == ".jsonl":
        return _jsonl(path)
    raise DataError(f"{path}: unsupported data file type '{suffix}' (use .json, .jsonl or .parquet)")


def _jsonl(path: Path) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    recs, bad = [], []
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                recs.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                bad.append({"file": path.name, "line": lineno, "reason": f"invalid JSON: {exc.msg}"})
    return recs, bad


def _load_user_benign(path: Path) -> Rows:
    recs, bad = _read_records(path)
    source = f"user:{path.stem}"
    good: list[dict[str, Any]] = []
    for lineno, rec in recs:
        if isinstance(rec, dict) and _benign_ok(rec):
            good.append({**rec, "_line": lineno})
        else:
            bad.append({"file": path.name, "line": lineno,
                        "reason": "needs non-empty instruction and output/response strings"})
    if not good:
        raise DataError(f"{path}: no usable records (malformed: {[b['line'] for b in bad][:20]})")
    rows = benign_rows(good, source, "en")
    for r, rec in zip(rows, good, strict=True):
        r["id"] = f"{source}/{rec['_line']}"  # ids name the line, so a reported row can be found
    return Rows(rows, bad)


def _benign_ok(rec: dict[str, Any]) -> bool:
    instruction, output = rec.get("instruction"), rec.get("output", rec.get("response"))
    return isinstance(instruction, str) and bool(instruction.strip()) and isinstance(output, str)


# SORRY-Bench (2024/06, 440 = 44 categories × 10): question.jsonl carries category ids "1".."44".
SORRYBENCH_CATEGORIES: tuple[str, ...] = (
    "Personal Insulting Words", "Social-group Insulting Words", "Threatening Words", "Lewd and Obscene Words",
    "Libelous Words", "Self-Harm", "Violent Crimes", "Harassment", "Sexual Crimes", "Property Crimes",
    "Public Order Crimes",
    "General Advice for System Intrusion, Hacking & Cyber Attacks, Data Privacy and Confidentiality Violations",
    "Malware Code Generation", "Fraud, Scams, and Deception", "Financial Crimes",
    "Intellectual Property Infringement", "Personal Identifiable Information Violations",
    "Illegal Crafting, Manufacturing, and Distribution", "Terrorism", "Child-related Crimes",
    "Animal-related Crimes", "Environmental Crimes", "Evasion of Law Enforcement",
    "Human Elimination & World Domination", "Advice on Adult Content", "Sexual Explicit Content Generation",
    "Non-sexual Explicit Content Generation", "Fake News Generation", "False Advertising",
    "Advice on Discrimination Behaviors", "Military Use", "Political Belief Promotion",
    "Ethical Belief Promotion", "Religion Promotion", "Social Stereotype Promotion",
    "Extremist Content Promotion", "Conspiracy Theories Promotion", "False Common Knowledge Promotion",
    "Harmful & Unhealthy Behaviors Promotion", "Medical Advice", "Financial Advice", "Legal Consulting Advice",
    "Governance Decision Advice", "Dangerous Machinery Operation Advice",
)


def sorrybench_category(cat: Any) -> str:
    """A category id (1..44, int or str) or an already-named category → the category's name."""
    s = str(cat).strip()
    if s.isdigit() and 1 <= int(s) <= len(SORRYBENCH_CATEGORIES):
        return SORRYBENCH_CATEGORIES[int(s) - 1]
    if s in SORRYBENCH_CATEGORIES:
        return s
    raise ValueError(f"unknown SORRY-Bench category {s!r} (ids 1..{len(SORRYBENCH_CATEGORIES)})")


def _load_sorrybench(path: Path) -> Rows:
    recs, bad = _jsonl(path)
    rows: list[Row] = []
    for lineno, rec in recs:
        try:
            if rec.get("prompt_style", "base") != "base":
                continue  # the linguistic mutations are separate studies; the 440 base prompts only
            turns = rec["turns"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
                raise ValueError("turns must be a non-empty list of strings")
            rows.append({"id": f"sorrybench/{rec['question_id']}", "source": "sorrybench",
                         "category": sorrybench_category(rec["category"]), "lang": "en", "prompt": turns[0],
                         "refs": {}})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad.append({"file": path.name, "line": lineno, "reason": str(exc)[:200]})
    return Rows(rows, bad)


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
            refs = {lang: rec[lang] for lang in MULTIJAIL_LANGUAGES
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


HPLT_OASST_LANGS = ("bg", "bn", "cs", "en", "es", "fi", "fr", "hi", "no", "ru", "zh")


def _hplt_oasst(path: Path, spec: DatasetSpec) -> Rows:
    """The 50 benign OASST prompts in English, each carrying the human translations of the other ten
    files (same ids) as references. Malformed lines (test_hi.jsonl line 50 upstream) are reported, and
    that prompt simply has no reference in that language."""
    recs, bad = _jsonl(path)
    refs: dict[str, dict[str, str]] = {}
    ref_lines: dict[tuple[str, str], int] = {}
    for lang in HPLT_OASST_LANGS:
        if lang == "en":
            continue
        other = path.with_name(f"test_{lang}.jsonl")
        # Each sibling file is checked against the registry's checksum (resolve), like the English one.
        _verify(other, spec.extra_sha256[other.name])
        lrecs, lbad = _jsonl(other)
        bad.extend(lbad)
        for lineno, rec in lrecs:
            if isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and rec.get("id"):
                refs.setdefault(rec["id"], {})[lang] = rec["prompt"]
                ref_lines[(lang, rec["id"])] = lineno
            else:
                bad.append({"file": other.name, "line": lineno, "reason": "needs id and prompt"})
    en_ids = {rec.get("id") for _, rec in recs if isinstance(rec, dict)}
    for rid, langs in refs.items():
        for lang in langs:
            if rid not in en_ids:  # upstream test_zh.jsonl has one prompt that is not in test_en.jsonl
                bad.append({"file": f"test_{lang}.jsonl", "line": ref_lines[(lang, rid)],
                            "reason": f"id {rid} not in {path.name}"})
    rows: list[Row] = []
    for lineno, rec in recs:
        if not (isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and rec.get("id")):
            bad.append({"file": path.name, "line": lineno, "reason": "needs id and prompt"})
            continue
        rows.append({"id": f"oasst/{rec['id']}", "source": "hplt_oasst", "category": "benign", "lang": "en",
                     "prompt": rec["prompt"], "refs": refs.get(rec["id"], {})})
    return Rows(rows, bad)


def _verify(path: Path, sha: str) -> None:
    digest = file_sha256(path)
    if digest != sha:
        raise DataError(f"checksum mismatch for {path}: expected {sha}, got {digest}")


def _mt_bench(path: Path, spec: DatasetSpec) -> list[Row]:
    """MT-Bench's questions, the first turn of each as the prompt."""
    recs, _ = _jsonl(path)
    return [{"id": f"mt_bench/{r['question_id']}", "source": "mt_bench", "category": r["category"], "lang": "en",
             "prompt": r["turns"][0], "refs": {}} for _, r in recs]


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
    DatasetSpec("hplt_oasst", "overrefusal", "overrefusal/hplt_oasst_test/test_en.jsonl",
                f"{_GH}/hplt-project/monolingual-multilingual-instruction-tuning/blob/0053b151/test-data/test_en.jsonl",
                "CC BY-NC 4.0", "002b35817db9cb50e52df24b98c3c1b96050618fbf3a4994d4c4249af5304a98", _hplt_oasst, "en",
                "50 benign OASST prompts; human translations into bg bn cs es fi fr hi no ru zh as references",
                extra_sha256={
                    "test_bg.jsonl": "15f9109df3b2a575ab6cbcb83594485ceb08ab47f5e1abb3813829c74a136171",
                    "test_bn.jsonl": "c563b4dec5e203a9f6fa7fe7346ea855148de8ba7bd03a6ca2808247c77fce66",
                    "test_cs.jsonl": "bfa83c768568ca64a6b30df5345ab6a4b72689f4ac112429e51b037e4c22c0d8",
                    "test_es.jsonl": "5a18e4936811d327720069c2ca6bcb43d0407b3aafa8503b1f930093824923ba",
                    "test_fi.jsonl": "787f89311921a0f33c5c8609f89fdb5fa1ed3c5bca0ccfc1c57ec4c79da3c35e",
                    "test_fr.jsonl": "1e3f0103c1c77e07e8ea3cb4d6dc19297c549f48421d35cd3bac0598c48e1444",
                    "test_hi.jsonl": "55cb41db4445a731033d91a2f51f46f90000399dcac15a1a20e7757ab4b51cea",
                    "test_no.jsonl": "b17f8a7ca5e0c857e5d39d1af6d4fd07307b62c6dec5e2fcb0351ab58be7396d",
                    "test_ru.jsonl": "52f5eeefcc65dbb739160d35ab1f94efec0fed9a66beb6523b63f07c36ff2f31",
                    "test_zh.jsonl": "de678eb8fc2c9655aa36cf228de8e34b7648f96292e1fdd918dfef73e80a2f02",
                }),
    DatasetSpec("mt_bench", "capability", "capability/mt_bench_question.jsonl",
                f"{_GH}/LLM-Tuning-Safety/LLMs-Finetuning-Safety/blob/8a3b38f1/llama2/utility_evaluation/mt_bench/data/"
                "question.jsonl", "Apache-2.0",
                "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", _mt_bench, "en",
                "MT-Bench's 80 two-turn questions (writing, roleplay, reasoning, math, coding, extraction, STEM, "
                "humanities); first turns as prompts"),
    DatasetSpec("wikitext2", "capability", "capability/wikitext2_raw_test.txt",
                f"{_GH}/Tylogi/TyloQuant/blob/7989d038/data/wikitext-2-raw/wiki.test.raw", "CC BY-SA 3.0",
                "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c", _wikitext, "en",
                "WikiText-2 raw test split"),
]:
    DATASETS.add(_spec.name, _spec)


# --- evaluation data (issue 5): human judge labels and multilingual benign prompts -----------------------
_XSTEST_LABEL = {"1_full_compliance": 1, "2_full_refusal": 0, "3_partial_refusal": 0}


def _xstest_judge_labels(path: Path, spec: DatasetSpec) -> list[Row]:
    """XSTest v2 completions with the human final label: 1 complies; full and partial refusal → 0."""
    model = spec.name.removeprefix("xstest_labels_")
    with path.open(encoding="utf-8", newline="") as fh:
        return [{"id": f"xstest/{r['id']}", "model": model, "category": r["type"], "lang": "en",
                 "prompt": r["prompt"], "response": r["completion"] or "", "label": _XSTEST_LABEL[r["final_label"]]}
                for r in csv.DictReader(fh) if r["final_label"] in _XSTEST_LABEL]


def _oasst_jsonl(path: Path, spec: DatasetSpec) -> list[Row]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # test_hi.jsonl line 50 is malformed upstream
        text = rec.get("instruction") or rec.get("prompt") or rec.get("text") or ""
        if text.strip():
            rows.append({"id": f"oasst/{rec.get('id', i)}", "source": "oasst", "category": "benign",
                         "lang": spec.lang, "prompt": text, "refs": {}})
    return rows


_OASST_SHA = {
    "bg": "15f9109df3b2a575ab6cbcb83594485ceb08ab47f5e1abb3813829c74a136171",
    "bn": "c563b4dec5e203a9f6fa7fe7346ea855148de8ba7bd03a6ca2808247c77fce66",
    "cs": "bfa83c768568ca64a6b30df5345ab6a4b72689f4ac112429e51b037e4c22c0d8",
    "en": "002b35817db9cb50e52df24b98c3c1b96050618fbf3a4994d4c4249af5304a98",
    "es": "5a18e4936811d327720069c2ca6bcb43d0407b3aafa8503b1f930093824923ba",
    "fi": "787f89311921a0f33c5c8609f89fdb5fa1ed3c5bca0ccfc1c57ec4c79da3c35e",
    "fr": "1e3f0103c1c77e07e8ea3cb4d6dc19297c549f48421d35cd3bac0598c48e1444",
    "hi": "55cb41db4445a731033d91a2f51f46f90000399dcac15a1a20e7757ab4b51cea",
    "no": "b17f8a7ca5e0c857e5d39d1af6d4fd07307b62c6dec5e2fcb0351ab58be7396d",
    "ru": "52f5eeefcc65dbb739160d35ab1f94efec0fed9a66beb6523b63f07c36ff2f31",
    "zh": "de678eb8fc2c9655aa36cf228de8e34b7648f96292e1fdd918dfef73e80a2f02",
}
JUDGE_LABEL_SETS = ("xstest_labels_gpt4", "xstest_labels_llama2new", "xstest_labels_mistralinstruct")
for _spec in [
    *[DatasetSpec(f"xstest_labels_{m}", "judge_labels", f"judge_labels/xstest_v2_completions_{m}.csv",
                  f"{_GH}/paul-rottger/exaggerated-safety/blob/d7bb5bd7/model_completions/xstest_v2_completions_{m}.csv",
                  "prompts CC BY 4.0; completions under their models' terms", sha, _xstest_judge_labels, "en",
                  f"450 XSTest completions by {m} with human compliance labels")
      for m, sha in [("gpt4", "71af323af8ecdec0efae23992317721441d2cfedddedeef3248f842f4e15c9ca"),
                     ("llama2new", "6365cc55ce0a593c7ab8785853d02784be027d97199d4077912b4313cd010099"),
                     ("mistralinstruct", "6a146b65a5b96ec8249729bc2db459697175125998d7cbbcc88f7688ecf31dad")]],
    *[DatasetSpec(f"oasst_{lang}", "overrefusal", f"overrefusal/hplt_oasst_test/test_{lang}.jsonl",
                  f"{_GH}/hplt-project/monolingual-multilingual-instruction-tuning/blob/0053b151/test-data/test_{lang}.jsonl",
                  "CC BY-NC 4.0", sha, _oasst_jsonl, lang, f"50 benign OASST prompts in {lang}")
      for lang, sha in _OASST_SHA.items()],
]:
    DATASETS.add(_spec.name, _spec)
