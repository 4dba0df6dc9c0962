"""A fitted logistic regression stored as numbers, not as an object: the trained judges' cache.

The judges cache is a folder several users or pods may share, so nothing read from it may run code: the
model is an .npz of its coefficients, intercept and classes plus a JSON header (format, the cache key it
was fitted for and that key's hash, and whatever the judge chose while fitting: C, threshold, the
cross-validation record), read with ``np.load(allow_pickle=False)`` and rebuilt into ``LinearModel``, a
predictor with scikit-learn's ``predict_proba``/``classes_`` and no scikit-learn or joblib behind it. A file
that is not exactly that, or was fitted for another key, reads as missing: the judge refits over it. The
pickled .joblib files of earlier versions sit under other names and are never opened."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.storage import atomic_file
from pipelines.hashing import stable_hash

log = logging.getLogger(__name__)
FORMAT = 1
SUFFIX = ".npz"


@dataclass(frozen=True)
class LinearModel:
    """A logistic regression as plain arrays; ``predict_proba`` is scikit-learn's: binary (the logistic of
    the decision function is the probability of ``classes_[1]``) or multinomial (the softmax of one decision
    function per class: the three outcomes of the trained judges)."""

    coef_: np.ndarray  # (1, n_features) binary; (k, n_features) for k ≥ 3 classes
    intercept_: np.ndarray  # (1,) or (k,)
    classes_: np.ndarray  # (2,) or (k,)

    @classmethod
    def of(cls, clf: Any) -> LinearModel:
        model = cls(np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64),
                    np.asarray(clf.classes_, dtype=np.int64))
        model.check()
        return model

    def check(self) -> None:
        k = self.classes_.shape[0] if self.classes_.ndim == 1 else -1
        rows = 1 if k == 2 else k
        if k < 2 or self.coef_.ndim != 2 or self.coef_.shape[0] != rows or self.intercept_.shape != (rows,):
            raise ValueError(f"not a binary linear model nor a multinomial one: coef {self.coef_.shape}, intercept "
                             f"{self.intercept_.shape}, classes {self.classes_.shape}")

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) @ self.coef_.T + self.intercept_
        return z[:, 0] if self.coef_.shape[0] == 1 else z

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.decision_function(x)
        if z.ndim == 2:  # multinomial: softmax, shifted by the row maximum so exp never overflows
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        p1 = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, with no overflow for large |z|
        return np.column_stack([1.0 - p1, p1])


def _header(key: dict[str, Any], fitted: dict[str, Any]) -> dict[str, Any]:
    # Through JSON once, so what is compared on load is what was written (tuples become lists, etc.).
    return json.loads(json.dumps({"format": FORMAT, "key": key, "key_hash": stable_hash(key), "fitted": fitted},
                                 sort_keys=True, default=float))


def save_linear(path: Path, clf: Any, key: dict[str, Any], fitted: dict[str, Any]) -> LinearModel:
    """Writes `clf` (anything with coef_, intercept_, classes_) atomically: a concurrent reader sees the
    old file or the whole new one. Returns the stored model, which predicts what `clf` does."""
    model = LinearModel.of(clf)
    header = json.dumps(_header(key, fitted), sort_keys=True)
    with atomic_file(path, fsync=False) as tmp, tmp.open("wb") as fh:
        np.savez(fh, coef=model.coef_, intercept=model.intercept_, classes=model.classes_, header=np.array(header))
    return model


def load_linear(path: Path, key: dict[str, Any]) -> tuple[LinearModel, dict[str, Any]] | None:
    """(model, what was chosen while fitting) from `path`, or None when it is missing, unreadable, not this
    format (a pickle included: it is refused, not run) or fitted for another key."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            model = LinearModel(np.asarray(z["coef"], dtype=np.float64), np.asarray(z["intercept"], dtype=np.float64),
                                np.asarray(z["classes"], dtype=np.int64))
        model.check()
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("judge cache %s is not a stored linear model (%s): refitting", path, type(exc).__name__)
        return None
    expected = _header(key, header.get("fitted") if isinstance(header, dict) else None)
    if header != expected:
        log.warning("judge cache %s was written for another key or format: refitting", path)
        return None
    return model, header["fitted"]
