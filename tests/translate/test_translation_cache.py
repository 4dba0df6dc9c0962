from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from pipelines.layout import Workdir
from pipelines.translate.cache import TranslationCache, text_hash


def _writer(root: str, worker: int, n: int) -> None:
    cache = TranslationCache(root, "apertium", "v1", "en", "es")
    for i in range(n):
        cache.put(f"shared {i}", f"compartido {i}")  # every worker writes the same keys
        cache.put(f"own {worker} {i}", f"propio {worker} {i}")


def test_get_put_and_key_parts(tmp_path: Path) -> None:
    c = TranslationCache(tmp_path, "apertium", "v1", "en", "es")
    assert c.get("Hello.") is None
    c.put("Hello.", "Hola.")
    assert c.get("Hello.") == "Hola." and (c.hits, c.misses) == (1, 1)
    # Each key part isolates: another version, direction or translator is a miss.
    assert TranslationCache(tmp_path, "apertium", "v2", "en", "es").get("Hello.") is None
    assert TranslationCache(tmp_path, "apertium", "v1", "es", "en").get("Hello.") is None
    assert TranslationCache(tmp_path, "nllb", "v1", "en", "es").get("Hello.") is None
    assert c.get_many(["Hello.", "Bye."]) == {"Hello.": "Hola."}


def test_concurrent_writers_leave_only_whole_entries(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = TranslationCache(tmp_path, "apertium", "v1", "en", "es")
    assert all(c.get(f"shared {i}") == f"compartido {i}" for i in range(60))
    assert all(c.get(f"own {w} {i}") == f"propio {w} {i}" for w in range(4) for i in range(60))
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_killed_write_and_corrupt_entry_are_misses(tmp_path: Path) -> None:
    c = TranslationCache(tmp_path, "apertium", "v1", "en", "es")
    c.put("ok", "bien")
    key = text_hash("half")
    d = c.dir / key[:2]
    d.mkdir(parents=True, exist_ok=True)
    (d / f".{key[:8]}.abc.tmp").write_text('{"k": "')  # a writer killed before its rename
    assert c.get("half") is None
    (d / f"{key}.json").write_text('{"k": "' + key + '", "v": "v1", "t"')  # damaged by hand
    assert c.get("half") is None
    c.put("half", "medio")  # rewritten on the next build
    assert c.get("half") == "medio" and c.get("ok") == "bien"


def test_cache_root_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SAFEDRIFT_CACHE", raising=False)
    assert Workdir.open(tmp_path / "wd").translation_cache() == tmp_path / "wd" / "translation_cache"
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "shared"))
    assert Workdir.open(tmp_path / "wd").translation_cache() == tmp_path / "shared" / "translation_cache"


def _endless_writer(root: str) -> None:
    cache = TranslationCache(root, "apertium", "v1", "en", "es")
    i = 0
    while True:
        cache.put(f"text {i} " + "x" * (i % 500), f"texto {i} " + "y" * (i % 500))
        i += 1


def test_sigkill_mid_write_leaves_only_whole_entries(tmp_path: Path) -> None:
    import time

    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_endless_writer, args=(str(tmp_path),))
    p.start()
    deadline = time.time() + 60
    c = TranslationCache(tmp_path, "apertium", "v1", "en", "es")
    while time.time() < deadline and sum(1 for _ in tmp_path.rglob("*.json")) < 50:
        time.sleep(0.05)
    p.kill()  # SIGKILL: no cleanup runs in the writer
    p.join(10)
    entries = list(c.dir.rglob("*.json"))
    assert len(entries) >= 50
    for e in entries:  # every entry that exists is whole and is what was written for its key
        import json

        blob = json.loads(e.read_text(encoding="utf-8"))
        assert blob["k"] == e.stem and blob["t"].startswith("texto ")
