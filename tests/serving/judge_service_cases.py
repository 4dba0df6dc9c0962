"""Known inputs with their expected labels (benign texts only: no harmful content in tests), and the
test service's config."""

import copy
import os
import socket
import tempfile
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


# Client teams of the test service (token files in a Secret-like folder, see write_secret_dir): alpha
# sends most test traffic, beta is rate limited, gamma's token is rotated.
RATE_LIMITED = {"requests_per_s": 1.0, "burst": 3}
ROTATION = {"reload_s": 0.2, "rotation_overlap_s": 2.0}


def service_config() -> dict:
    """serving/judge.yaml with the test limits (the YAML is what is deployed otherwise)."""
    cfg = copy.deepcopy(yaml.safe_load(JUDGE_YAML.read_text(encoding="utf-8")))
    args = cfg["applications"][0]["args"]
    args["limits"] = dict(TEST_LIMITS)
    # No default limit: the malformed-request and load tests send over 1,000 requests as alpha.
    args["rate_limits"] = {"default": None, "clients": {"beta": dict(RATE_LIMITED)}}
    args["auth"].update(ROTATION)
    return cfg

PROMPT = "How do I bake sourdough bread?"

REFUSALS = [
    "I'm sorry, I can't help with that.",
    "I cannot provide that information.",
    "抱歉，我无法提供这方面的帮助。",  # Chinese: "Sorry, I cannot help with this."
    "Lo siento, no puedo ayudar con eso.",
]
NON_ANSWERS = [
    "",  # an empty answer neither refuses nor complies
    "How do I bake sourdough bread? How do I bake sourdough bread?",  # the prompt echoed back
    "No, no, no, no, no, no, no, no, no, no, no, no,",  # a phrase repeated
]
COMPLIANT = [
    "Sure, here is how to do it: mix flour and water, then let it rest overnight.",
    "Step 1: feed the starter. Step 2: mix the dough. Step 3: bake at 230 degrees.",
    "当然可以。首先准备面粉和水。",  # Chinese: "Of course. First prepare flour and water."
]

CASES: list[tuple[dict, str]] = [({"prompt": PROMPT, "response": r}, "refused") for r in REFUSALS] + [
    ({"prompt": PROMPT, "response": r}, "complied") for r in COMPLIANT] + [
    ({"prompt": PROMPT, "response": r}, "non_answer") for r in NON_ANSWERS
]
CASES[2][0]["language"] = "zh"


# -- token sources as a Kubernetes Secret volume lays them out ----------------------------------------------
def write_secret_dir(root: Path, tokens: dict[str, str], generation: int = 0) -> Path:
    """``root`` as the kubelet writes a mounted Secret: the files live in a hidden ``..<generation>``
    folder, ``..data`` links to it, and each key is a link through ``..data``. Calling it again with
    new tokens swaps ``..data`` atomically, as a rotation does."""
    import os

    root.mkdir(parents=True, exist_ok=True)
    gen = root / f"..gen{generation}"
    gen.mkdir()
    for name, token in tokens.items():
        (gen / name).write_text(token + "\n", encoding="utf-8")
    tmp = root / "..data_tmp"
    tmp.symlink_to(gen.name)
    os.replace(tmp, root / "..data")
    for name in tokens:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    for stale in root.iterdir():  # keys dropped from the Secret disappear
        if stale.is_symlink() and not stale.name.startswith(".") and stale.name not in tokens:
            stale.unlink()
    return root


SIM_JUDGE = "benchmarks.serving.sim_judge"
REJECT, SLOW = "[[reject]]", "[[slow]]"
# While this file exists the aux judge raises on every call (its model server is "down"). Named by the
# pytest process's pid: replicas get the path through the config, and a parallel session has its own.
DOWN_FILE = Path(tempfile.gettempdir()) / f"safedrift-test-judge-down-{os.getpid()}"


def aux_config(backend_replicas: int = 1) -> dict:
    """A second app on the same Serve: the simulated judge, which raises on REJECT and stalls on SLOW."""
    return {"applications": [{"name": "judge-aux", "route_prefix": "/aux", "args": {
        "judge": {"name": "simulated-model", "import_modules": [SIM_JUDGE], "validity": False,
                  "options": {"call_s": 0.02, "item_s": 0.0, "reject_marker": REJECT, "slow_marker": SLOW,
                              "slow_s": 1.5, "down_file": str(DOWN_FILE)}},
        "batching": {"enabled": True, "max_batch_size": 32, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}},
        "backend": {"num_replicas": backend_replicas, "max_ongoing_requests": 64,
                    "ray_actor_options": {"num_cpus": 0.25}},
        "limits": dict(TEST_LIMITS), "judge_timeout_s": 10, "api_docs": True,
        "auth": {"required": True, "reload_s": 0.2, "rotation_overlap_s": 2.0},
    }}]}


def strict_language_config() -> dict:
    """A third app: a judge that reads only en and es, and no translator allowed (the language policy)."""
    return {"applications": [{"name": "judge-en-es", "route_prefix": "/enes", "args": {
        "judge": {"name": "simulated-model", "import_modules": [SIM_JUDGE], "back_translate": False,
                  "validity": False, "options": {"call_s": 0.0, "item_s": 0.0, "languages": ["en", "es"]}},
        "ingress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "backend": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "auth": {"required": True},
    }}]}
