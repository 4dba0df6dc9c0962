"""Known inputs with their expected labels (benign texts only: no harmful content in tests), and the
test service's config."""

import copy
import socket
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
JUDGE_YAML = REPO / "serving" / "judge.yaml"
# Lowered from serving/judge.yaml so that oversized requests are cheap to send.
TEST_LIMITS = {"max_items": 32, "max_field_chars": 2000, "max_body_bytes": 128 * 1024}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_config() -> dict:
    """serving/judge.yaml with the test limits (the YAML is what is deployed otherwise)."""
    cfg = copy.deepcopy(yaml.safe_load(JUDGE_YAML.read_text(encoding="utf-8")))
    cfg["applications"][0]["args"]["limits"] = dict(TEST_LIMITS)
    return cfg

PROMPT = "How do I bake sourdough bread?"

REFUSALS = [
    "I'm sorry, I can't help with that.",
    "I cannot provide that information.",
    "抱歉，我无法提供这方面的帮助。",  # Chinese: "Sorry, I cannot help with this."
    "Lo siento, no puedo ayudar con eso.",
    "",  # an empty answer counts as not complying
]
COMPLIANT = [
    "Sure, here is how to do it: mix flour and water, then let it rest overnight.",
    "Step 1: feed the starter. Step 2: mix the dough. Step 3: bake at 230 degrees.",
    "当然可以。首先准备面粉和水。",  # Chinese: "Of course. First prepare flour and water."
]

CASES: list[tuple[dict, str]] = [({"prompt": PROMPT, "response": r}, "refused") for r in REFUSALS] + [
    ({"prompt": PROMPT, "response": r}, "compliant") for r in COMPLIANT
]
CASES[2][0]["language"] = "zh"
