"""The translate stage on a real local Ray cluster with Apertium: Ray Data actors, the segment cache,
a superset rebuild that translates only the new rows, a user benign file, and the resource sizing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.presets import load_config
from pipelines.translate import actor_resources, build_datasets, read_split


@pytest.fixture
def apertium_ray(ray_cluster, require_tool, monkeypatch):
    require_tool("apertium")
    monkeypatch.delenv("SAFEDRIFT_CACHE", raising=False)
    return ray_cluster


def _user_file(tmp_path: Path, n: int) -> Path:
    recs = [{"instruction": f"Write a short note number {i} to my neighbour.\nKeep it friendly.",
             "context": "" if i % 2 else "The neighbour has a dog.", "response": f"Dear neighbour, this is note {i}. "
             "Your garden is beautiful. See you soon."} for i in range(n)]
    f = tmp_path / "notes.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n{broken\n")
    return f


def test_ray_data_build_then_superset(apertium_ray, tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    notes = _user_file(tmp_path, 6)

    def cfg(n: int, round_trip: bool):
        # Batches of 6 rows over 2 actors; Apertium costs ~0.5-1 s a call here, so few calls.
        return load_config("smoke", [f"workdir={wd}", "ft_langs=[es]", "eval_langs=[en,pt]",
                                     f"data.benign.source=file:{notes}", f"data.benign.n={n}",
                                     f"data.eval.n_harmful={n}", "translate.batch_size=6",
                                     "translate.concurrency=2", f"translate.qa.round_trip={str(round_trip).lower()}",
                                     "data.eval.n_safe=0", "evaluate.n_benign_ppl=0"])  # benign + eval only

    small = build_datasets(cfg(4, True), wd, force_ray=True)
    assert small.stats["path"] == "ray" and small.stats["segments_translated"] > 0
    m = small.manifest
    assert m["counts"] == {"benign": {"es": 4}, "eval": {"en": 4, "pt": 4}}
    assert m["routes"]["eval/pt"] == "apertium:en-es+apertium:es-pt"
    assert m["malformed"][f"file:{notes}"]["lines"][0]["line"] == 7
    assert m["sources"][f"file:{notes}"] == __import__("hashlib").sha256(notes.read_bytes()).hexdigest()
    b = read_split(small.path, "benign", "es")
    assert b["id"].to_list() == [f"user:notes/{i}" for i in range(1, 5)] and b["idx"].to_list() == [0, 1, 2, 3]
    assert all("\n" in x for x in b["instruction"])  # line structure kept through segmentation
    assert all("vecino" in x.lower() for x in b["instruction"])
    assert b["qa_lang"].to_list() == ["es"] * 4 and b["qa_chrf"].null_count() == 0
    pt, en = read_split(small.path, "eval", "pt"), read_split(small.path, "eval", "en")
    assert pt["id"].to_list() == en["id"].to_list() and (pt["prompt"] != en["prompt"]).all()

    # A superset (two more rows per split; no round trip this time, so only forward hops count).
    big = build_datasets(cfg(6, False), wd, force_ray=True)
    bb = read_split(big.path, "benign", "es", qa_filter=False)
    assert bb["tr_new"].to_list()[:4] == [0, 0, 0, 0] and all(x > 0 for x in bb["tr_new"].to_list()[4:])
    assert bb["instruction"].to_list()[:4] == b["instruction"].to_list()
    bpt = read_split(big.path, "eval", "pt", qa_filter=False)
    assert bpt["tr_new"].to_list()[:4] == [0, 0, 0, 0]
    assert 0 < big.stats["segments_translated"] < small.stats["segments_translated"]


def test_actor_resources_follow_config_and_cluster(apertium_ray, monkeypatch) -> None:
    import ray

    cfg = load_config("smoke", ["translate.concurrency=64"])
    res = actor_resources(cfg, ["apertium"])
    assert res["num_gpus"] == 0 and res["concurrency"] == int(ray.cluster_resources()["CPU"] / 0.5)
    assert actor_resources(load_config("smoke", ["translate.concurrency=2"]), ["apertium"])["concurrency"] == 2
    # auto: one actor per CPU; never more actors than batches
    auto = load_config("smoke", ["translate.concurrency=auto"])
    assert actor_resources(auto, ["apertium"])["concurrency"] == int(ray.cluster_resources()["CPU"])
    assert actor_resources(cfg, ["apertium"], n_batches=3)["concurrency"] == 3
    with pytest.raises(ConfigError, match="concurrency"):
        load_config("smoke", ["translate.concurrency=many"])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    res = actor_resources(cfg, ["nllb", "apertium"])
    assert (res["num_gpus"], res["concurrency"]) == (1.0, 2)  # one GPU per NLLB actor, two GPUs
    half = load_config("smoke", ["translate.concurrency=64", "translate.options={nllb: {num_gpus: 0.5}}"])
    assert actor_resources(half, ["nllb"])["concurrency"] == 4
