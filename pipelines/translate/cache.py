"""The translation cache: one entry per translated segment, keyed by (text hash, translator, translator
version, source language, target language).

Entries are one small file each, written to a temporary name and renamed into place. Rename is atomic
on POSIX file systems (NFS and RWX volumes included, where sqlite's locking is not to be trusted), so
any number of Ray actors on any number of nodes can write at once; a process killed mid-write leaves at
most a stray temporary file that no reader looks at, never a corrupt entry; two writers of the same key
write the same content and the last rename wins. A rebuild (or a build of a superset) reads the entries
that exist and translates only the rest. Layout: <root>/<translator>/<version-hash>/<src>-<tgt>/<ab>/<key>.json
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cluster.storage import write_text_atomic
from pipelines.hashing import stable_hash


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TranslationCache:
    def __init__(self, root: Path | str, translator: str, version: str, src: str, tgt: str) -> None:
        self.translator, self.version, self.src, self.tgt = translator, version, src, tgt
        self.dir = Path(root) / translator / stable_hash(version, 10) / f"{src}-{tgt}"
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, text: str) -> str | None:
        key = text_hash(text)
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            # Missing, or unreadable (only possible if someone edited it): treat as a miss; the
            # translation is redone and the entry rewritten.
            self.misses += 1
            return None
        if entry.get("k") != key or entry.get("v") != self.version or not isinstance(entry.get("t"), str):
            self.misses += 1
            return None
        self.hits += 1
        return entry["t"]

    def get_many(self, texts: Iterable[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in texts:
            got = self.get(t)
            if got is not None:
                out[t] = got
        return out

    def put(self, text: str, translation: str) -> None:
        key = text_hash(text)
        path = self._path(key)
        # The entry carries its key and version so a reader can tell a real entry from anything else.
        blob = json.dumps({"k": key, "v": self.version, "t": translation}, ensure_ascii=False)
        # No fsync: atomicity against a killed process comes from the rename; a power cut may lose
        # recent entries (they are simply translated again), and fsync per entry would be slow.
        write_text_atomic(path, blob, fsync=False)

    def put_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        for text, translation in pairs:
            self.put(text, translation)
