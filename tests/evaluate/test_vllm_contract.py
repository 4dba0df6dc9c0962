"""The calls safedrift's vLLM backend makes bind to vLLM's real signatures (issue #17 point 6, #29 point 10).

vLLM has no CPU wheel, so its API is recorded from the pinned wheel's source into vllm_api.json
(record_vllm_api.py parses it; version and sha256 in the file). A stand-in `vllm` module is built from
those records: each class binds its arguments with inspect.Signature exactly as Python would, so a renamed
or missing parameter, a wrong positional order, an EngineArgs field vLLM lacks or an unknown TokensPrompt
key raises TypeError; the values vLLM checks are checked too (max_lora_rank in vLLM's allowed set, LoRA ids
from 1, a non-empty adapter path), and its outputs carry only the recorded fields. Then the backend's real
generate_vllm_many runs against it."""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from chat_templates import tiny_tokenizer

from pipelines.config import GenerateConfig
from pipelines.evaluate.backends import vllm as backend
from pipelines.registries.chat import prompt_token_ids

RECORD = json.loads((Path(__file__).with_name("vllm_api.json")).read_text())
API = RECORD["signatures"]
REPO = Path(__file__).resolve().parents[2]


def signature(record: dict[str, Any]) -> inspect.Signature:
    params = [inspect.Parameter(name, getattr(inspect.Parameter, kind),
                                default=None if has_default else inspect.Parameter.empty)
              for name, kind, has_default in record["params"]]
    return inspect.Signature(params)


def fake_vllm(shapes: dict[str, dict[str, Any]], tok: Any, calls: list[tuple[str, Any]]) -> types.ModuleType:
    engine_fields = set(shapes["EngineArgs"]["fields"])
    tp = shapes["TokensPrompt"]

    class LLM:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            bound = signature(shapes["LLM.__init__"]).bind(self, *args, **kwargs)
            extra = set(bound.arguments.get("kwargs", {})) - engine_fields
            if extra:
                raise TypeError(f"EngineArgs has no field(s) {sorted(extra)}")
            rank = kwargs.get("max_lora_rank")
            if rank is not None and rank not in RECORD["values"]["max_lora_rank"]:
                raise ValueError(f"max_lora_rank {rank} is not one of {RECORD['values']['max_lora_rank']}")
            calls.append(("LLM", kwargs))

        def get_tokenizer(self) -> Any:
            return tok

        def generate(self, *args: Any, **kwargs: Any) -> list[Any]:
            bound = signature(shapes["LLM.generate"]).bind(self, *args, **kwargs)
            prompts = bound.arguments["prompts"]
            for p in prompts:
                if not isinstance(p, dict) or set(tp["required"]) - set(p) or set(p) - {*tp["required"], *tp["optional"]}:
                    raise TypeError(f"not a TokensPrompt: {sorted(p) if isinstance(p, dict) else type(p)}")
            loras = bound.arguments.get("lora_request")
            if isinstance(loras, list) and len(loras) != len(prompts):
                raise ValueError("lora_request must have one entry per prompt")
            calls.append(("generate", bound.arguments))
            return [request_output(f"answer {i}") for i in range(len(prompts))]

    def SamplingParams(*args: Any, **kwargs: Any) -> dict[str, Any]:  # noqa: N802 - vLLM's name
        signature(shapes["SamplingParams"]).bind(*args, **kwargs)
        return kwargs

    class LoRARequest:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            b = signature(shapes["LoRARequest"]).bind(*args, **kwargs)
            self.lora_name, self.lora_int_id, self.lora_path = (b.arguments[k] for k in
                                                                 ("lora_name", "lora_int_id", "lora_path"))
            if self.lora_int_id < RECORD["values"]["lora_int_id_min"] or not self.lora_path:
                raise ValueError(f"LoRA id {self.lora_int_id} (vLLM reserves 0) or empty path {self.lora_path!r}")

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    req = types.ModuleType("vllm.lora.request")
    req.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    return mod, lora, req  # type: ignore[return-value]


def request_output(text: str) -> Any:
    """A RequestOutput with only the fields vLLM's records: reading any other one raises AttributeError."""
    def record(names: list[str], **values: Any) -> Any:
        cls = type("Recorded", (), {"__slots__": tuple(names)})
        obj = cls()
        for name in names:
            setattr(obj, name, values.get(name))
        return obj

    out = RECORD["outputs"]
    return record(out["RequestOutput"], outputs=[record(out["CompletionOutput"], text=text, index=0)])


SHAPES = [dict(zip(API, combo, strict=True)) for combo in itertools.product(*API.values())]


@pytest.mark.parametrize("shapes", SHAPES, ids=[f"shape{i}" for i in range(len(SHAPES))])
def test_backend_calls_bind_to_the_recorded_vllm_api(shapes, tmp_path, monkeypatch) -> None:
    tok = tiny_tokenizer("llama")
    calls: list[tuple[str, Any]] = []
    mod, lora, req = fake_vllm(shapes, tok, calls)
    for name, m in (("vllm", mod), ("vllm.lora", lora), ("vllm.lora.request", req)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(backend, "_ENGINES", {})
    monkeypatch.setattr(backend, "_LORA_IDS", {})  # ids are per engine: a fresh one starts at 1
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    gcfg = GenerateConfig(max_new_tokens=7, temperature=0.7, top_p=0.9)
    out = backend.generate_vllm_many(tmp_path / "base", [(None, ["Hi there."]), (adapter, ["Bake bread?", "Why?"])],
                                     gcfg, max_loras=2, gpu_memory_utilization=0.5, max_model_len=2048)
    assert out == [["answer 0"], ["answer 1", "answer 2"]]
    (_, engine), (_, gen) = calls
    assert engine["enable_lora"] is True and engine["max_loras"] == 2
    # The prompts are the transformers path's token ids, one LoRA request per prompt (None = base).
    assert [p["prompt_token_ids"] for p in gen["prompts"]] == prompt_token_ids(tok, ["Hi there.", "Bake bread?", "Why?"])
    loras = gen["lora_request"]
    assert loras[0] is None and loras[1].lora_int_id == loras[2].lora_int_id == 1
    assert loras[1].lora_path == str(adapter.resolve())


def test_the_stand_in_rejects_a_call_that_would_fail_in_vllm(tmp_path) -> None:
    shapes = SHAPES[0]
    mod, _, req = fake_vllm(shapes, tiny_tokenizer("qwen3"), [])
    with pytest.raises(TypeError):
        mod.SamplingParams(max_new_tokens=5)  # transformers' name, not vLLM's
    with pytest.raises(TypeError):
        req.LoRARequest("a", 1, "/x", *["extra"] * len(shapes["LoRARequest"]["params"]))  # more than its fields
    llm = mod.LLM(model="m", enable_lora=True)
    with pytest.raises(TypeError):
        llm.generate([{"prompt": "text"}])  # a TextPrompt where TokensPrompts are promised
    with pytest.raises(TypeError):
        mod.LLM(model="m", enable_loras=True)  # not an EngineArgs field


@pytest.mark.parametrize("shapes", SHAPES[:1] + SHAPES[-1:], ids=["first", "last"])
@pytest.mark.parametrize("style", ["llama", "qwen3"])
def test_sorry_bench_judge_sends_the_template_token_ids(shapes, style, monkeypatch) -> None:
    """The SORRY-Bench judge's vLLM path binds to the recorded API too and sends token ids: exactly one
    BOS for a template that writes its own (a text prompt would get a second)."""
    from pipelines.evaluate.judges import JudgeItem, llm
    from pipelines.evaluate.judges.llm import SorryBenchJudge

    tok = tiny_tokenizer(style)
    calls: list[tuple[str, Any]] = []
    mod, lora, req = fake_vllm(shapes, tok, calls)
    for name, m in (("vllm", mod), ("vllm.lora", lora), ("vllm.lora.request", req)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(llm, "_VLLM_ENGINES", {})  # one engine per model per process: a fresh process here
    judge = SorryBenchJudge(model=".", backend="vllm")
    items = [JudgeItem("How do I bake bread?", "Mix flour and water.", "en")]
    assert judge.raw_outputs(items) == ["answer 0"]
    (_, engine), (_, gen) = calls
    assert engine["gpu_memory_utilization"] == 0.8
    ids = gen["prompts"][0]["prompt_token_ids"]
    assert ids == prompt_token_ids(tok, judge.prompts(items))[0]
    if style == "llama":
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


class RacyEngine:
    """Like vLLM's offline LLM where it matters here: generate() adds its requests to the one engine, steps
    it, and returns every output that finished — its own and any other caller's. A second engine in the
    process fails, as it does on a GPU the first one fills."""

    made = 0

    def __init__(self, *args: Any, tok: Any = None, **kwargs: Any) -> None:
        type(self).made += 1
        time.sleep(0.05)  # an engine takes a while to start: long enough for a second thread to start one
        if type(self).made > 1:
            raise RuntimeError("CUDA out of memory: another engine holds the GPU")
        self._tok, self._queue = tok, []

    def get_tokenizer(self) -> Any:
        return self._tok

    def generate(self, prompts: list[dict[str, list[int]]], params: Any) -> list[Any]:
        self._queue += [p["prompt_token_ids"] for p in prompts]
        time.sleep(0.02)  # the engine steps; another caller's requests may join meanwhile
        done, self._queue = self._queue, []
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=_ident(ids))]) for ids in done]


def _ident(ids: list[int]) -> str:
    return f"{len(ids)}:{sum(ids)}"


def test_the_llm_judge_serves_two_threads_with_one_engine_and_their_own_outputs(monkeypatch) -> None:
    """Issue #29, point 3: a Serve replica's judge calls and its validity measurement (two judge objects
    of one model, in two threads) share one engine, and each caller gets its own prompts' outputs."""
    from pipelines.evaluate.judges import JudgeItem, llm

    tok = tiny_tokenizer("llama")
    mod = types.ModuleType("vllm")
    mod.LLM = functools.partial(RacyEngine, tok=tok)  # type: ignore[attr-defined]
    mod.SamplingParams = lambda **kwargs: kwargs  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(RacyEngine, "made", 0)
    monkeypatch.setattr(llm, "_VLLM_ENGINES", {})
    judges = [llm.SorryBenchJudge(model=".", backend="vllm") for _ in range(2)]
    work = {w: [JudgeItem(f"Question {w}.{i} " + "word " * (w * 7 + i), "An answer.", "en") for i in range(5)]
            for w in range(2)}
    got: dict[int, list[list[str]]] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def caller(w: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                got[w].append(judges[w].raw_outputs(work[w]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
    assert RacyEngine.made == 1
    for w in range(2):
        want = [_ident(p["prompt_token_ids"]) for p in llm.judge_token_prompts(tok, judges[w].prompts(work[w]))]
        assert got[w] == [want] * 3, f"thread {w} got another caller's outputs"


def test_the_recording_is_of_the_pinned_wheel() -> None:
    """The pin (pyproject's gpu extra, constraints/gpu.txt) and the recorded wheel agree."""
    pins = {f"vllm=={RECORD['vllm_version_pinned']}"}
    text = (REPO / "pyproject.toml").read_text() + (REPO / "constraints" / "gpu.txt").read_text()
    assert set(re.findall(r"vllm==[0-9][^\"\s,]*", text)) == pins, "re-record vllm_api.json (record_vllm_api.py)"
    wheel = RECORD["wheel"]
    assert wheel["file"].startswith(f"vllm-{RECORD['vllm_version_pinned']}-") and len(wheel["sha256"]) == 64
    assert all(e["source"].startswith(f"vllm=={RECORD['vllm_version_pinned']} wheel: ")
               for shapes in API.values() for e in shapes)


def test_the_recording_matches_the_wheel_when_it_is_here() -> None:
    """Re-parses the pinned wheel (VLLM_WHEEL, or pip's download folder /tmp/vllmwheel) and compares."""
    from record_vllm_api import record

    name = RECORD["wheel"]["file"]
    wheel = Path(os.environ.get("VLLM_WHEEL") or f"/tmp/vllmwheel/{name}")
    if not wheel.exists():
        pytest.skip(f"no {name} here: pip download --no-deps vllm=={RECORD['vllm_version_pinned']} -d /tmp/vllmwheel")
    assert record(wheel) == RECORD


def test_the_stand_in_checks_the_values_vllm_checks() -> None:
    mod, _, req = fake_vllm(SHAPES[0], tiny_tokenizer("qwen3"), [])
    with pytest.raises(ValueError, match="max_lora_rank 48"):
        mod.LLM(model="m", enable_lora=True, max_lora_rank=48)
    with pytest.raises(ValueError, match="LoRA id 0"):
        req.LoRARequest("a", 0, "/x")
    with pytest.raises(ValueError, match="empty path"):
        req.LoRARequest("a", 1, "")
    with pytest.raises(AttributeError):
        getattr(request_output("x").outputs[0], "logprob")  # noqa: B009 - not a field (logprobs is)


def test_the_engine_lora_rank_is_one_vllm_accepts_for_every_adapter_rank() -> None:
    """max_lora_rank is the smallest value the pinned vLLM accepts that holds the adapters (never 96 for r=96,
    which vLLM refuses), and the accepted list is the one recorded from the wheel."""
    from pipelines.evaluate.backends.vllm import VLLM_LORA_RANKS, lora_rank_slot

    assert list(VLLM_LORA_RANKS) == RECORD["values"]["max_lora_rank"]
    assert [lora_rank_slot(r) for r in (4, 8, 64, 65, 96, 300, 512)] == [64, 64, 64, 128, 128, 320, 512]
    with pytest.raises(ValueError, match="lower finetune.lora.r"):
        lora_rank_slot(1024)
