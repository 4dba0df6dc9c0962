"""Records tests/evaluate/vllm_api.json from the pinned vLLM wheel's source: parsed with `ast`, never
installed or imported (vLLM has no CPU wheel, and needs no GPU to be read). The JSON names the wheel's
version and sha256; test_vllm_contract.py checks the pin against it.

    pip download --no-deps vllm==0.33.0 -d /tmp/vllmwheel          # about 336 MB
    python tests/evaluate/record_vllm_api.py /tmp/vllmwheel/vllm-0.33.0-*.whl > tests/evaluate/vllm_api.json

What it records: the parameters of every call safedrift makes (LLM.__init__, LLM.generate, SamplingParams,
LoRARequest), every EngineArgs field (LLM(**kwargs) goes there), TokensPrompt's keys, the values vLLM
accepts for max_lora_rank, and the fields of the outputs safedrift reads (RequestOutput, CompletionOutput)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

FILES = {"llm": "vllm/entrypoints/llm.py", "engine": "vllm/engine/arg_utils.py", "inputs": "vllm/inputs/llm.py",
         "sampling": "vllm/sampling_params.py", "lora": "vllm/lora/request.py", "lora_config": "vllm/config/lora.py",
         "outputs": "vllm/outputs.py"}


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def params(fn: ast.FunctionDef) -> list[list[Any]]:
    """[name, inspect kind, has default] per parameter, as inspect.signature would list them."""
    a = fn.args
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    out = [[p.arg, "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD", i >= first_default]
           for i, p in enumerate(positional)]
    if a.vararg:
        out.append([a.vararg.arg, "VAR_POSITIONAL", False])
    out += [[p.arg, "KEYWORD_ONLY", d is not None] for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        out.append([a.kwarg.arg, "VAR_KEYWORD", False])
    return out


def fields(cls: ast.ClassDef) -> list[tuple[str, ast.AnnAssign]]:
    """Annotated class attributes in order (dataclass, msgspec.Struct and TypedDict fields), ClassVars out."""
    return [(n.target.id, n) for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and "ClassVar" not in ast.unparse(n.annotation)]


def struct_params(cls: ast.ClassDef) -> list[list[Any]]:
    """A msgspec.Struct's constructor: its fields in order, keyword-only when the class says kw_only."""
    kw_only = any(k.arg == "kw_only" and ast.literal_eval(k.value) for k in cls.keywords)
    kind = "KEYWORD_ONLY" if kw_only else "POSITIONAL_OR_KEYWORD"
    return [[name, kind, node.value is not None] for name, node in fields(cls)]


def typed_dict(tree: ast.Module, name: str) -> dict[str, Any]:
    """A TypedDict's keys with those of its TypedDict bases in the same module; NotRequired[...] optional."""
    found = classes(tree)
    required, optional = set(), set()
    todo = [name]
    while todo:
        cls = found[todo.pop()]
        todo += [b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in found]
        for key, node in fields(cls):
            (optional if ast.unparse(node.annotation).startswith("NotRequired") else required).add(key)
    return {"typed_dict": True, "required": sorted(required), "optional": sorted(optional)}


def literal_values(tree: ast.Module, name: str) -> list[Any]:
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name)
    return list(ast.literal_eval(node.value.slice))  # Literal[1, 8, ...]


def init_attributes(cls: ast.ClassDef) -> list[str]:
    """The attributes __init__ sets on self (RequestOutput is a plain class)."""
    return sorted({t.attr for n in ast.walk(method(cls, "__init__")) if isinstance(n, ast.Assign)
                   for t in n.targets if isinstance(t, ast.Attribute) and getattr(t.value, "id", "") == "self"})


def record(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as zf:
        trees = {k: ast.parse(zf.read(path).decode()) for k, path in FILES.items()}
        version = re.search(r"^Version: (\S+)$", zf.read(next(n for n in zf.namelist()
                                                             if n.endswith(".dist-info/METADATA"))).decode(), re.M)[1]
    src = f"vllm=={version} wheel"

    def entry(key: str, **shape: Any) -> list[dict[str, Any]]:
        return [{"source": f"{src}: {FILES[key]}", **shape}]

    llm = classes(trees["llm"])["LLM"]
    return {
        "_about": ("Recorded by tests/evaluate/record_vllm_api.py from the pinned wheel's source (parsed, not "
                   "imported). Refresh after changing the pin (pyproject's gpu extra): see that script."),
        "vllm_version_pinned": version,
        "wheel": {"file": wheel.name, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
        "signatures": {
            "LLM.__init__": entry("llm", params=params(method(llm, "__init__")), var_keyword_goes_to="EngineArgs"),
            "EngineArgs": entry("engine", fields=[n for n, _ in fields(classes(trees["engine"])["EngineArgs"])]),
            "LLM.generate": entry("llm", params=params(method(llm, "generate"))),
            "TokensPrompt": entry("inputs", **typed_dict(trees["inputs"], "TokensPrompt")),
            "SamplingParams": entry("sampling", params=struct_params(classes(trees["sampling"])["SamplingParams"])),
            "LoRARequest": entry("lora", params=struct_params(classes(trees["lora"])["LoRARequest"])),
        },
        "values": {"max_lora_rank": literal_values(trees["lora_config"], "MaxLoRARanks"),
                   "lora_int_id_min": 1},
        "outputs": {"RequestOutput": init_attributes(classes(trees["outputs"])["RequestOutput"]),
                    "CompletionOutput": [n for n, _ in fields(classes(trees["outputs"])["CompletionOutput"])]},
    }


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: record_vllm_api.py VLLM_WHEEL (see the module doc)")
    print(json.dumps(record(Path(argv[0])), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
