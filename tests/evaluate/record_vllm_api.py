"""Re-record tests/evaluate/vllm_api.json from an installed vLLM (a GPU image with the `gpu` extra):
`python tests/evaluate/record_vllm_api.py > tests/evaluate/vllm_api.json`. Prints the same structure the
contract test reads, one recorded shape per signature, tagged with the installed version."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing


def params(obj: typing.Any) -> list[list[typing.Any]]:
    return [[p.name, p.kind.name, p.default is not inspect.Parameter.empty]
            for p in inspect.signature(obj).parameters.values()]


def main() -> None:
    import vllm
    from vllm.engine.arg_utils import EngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    src = f"vllm=={vllm.__version__} (installed)"
    hints = typing.get_type_hints(TokensPrompt)
    out = {"_about": "recorded by tests/evaluate/record_vllm_api.py", "vllm_version_pinned": vllm.__version__,
           "signatures": {
               "LLM.__init__": [{"source": src, "commit": None, "params": params(vllm.LLM.__init__),
                                 "var_keyword_goes_to": "EngineArgs"}],
               "EngineArgs": [{"source": src, "commit": None,
                               "fields": [f.name for f in dataclasses.fields(EngineArgs)]}],
               "LLM.generate": [{"source": src, "commit": None, "params": params(vllm.LLM.generate)}],
               "TokensPrompt": [{"source": src, "commit": None, "typed_dict": True,
                                 "required": sorted(TokensPrompt.__required_keys__),
                                 "optional": sorted(set(hints) - TokensPrompt.__required_keys__)}],
               "SamplingParams": [{"source": src, "commit": None, "params": params(vllm.SamplingParams)}],
               "LoRARequest": [{"source": src, "commit": None, "params": params(LoRARequest)}],
           }}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
