"""The trained judge's cache holds numbers, not pickles (issue #19, point 6): the stored model predicts what
scikit-learn's does, and a pickle planted where the cache is (the old .joblib name or the new .npz one)
is never executed; the judge refits over it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipelines.evaluate.judges.linear_store import LinearModel, load_linear, save_linear

KEY = {"labels": ["abc"], "C": 1.0, "version": "2"}


class _Planted:
    """Unpickling this creates `marker`: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Planted(marker)))


def _sklearn_fit(seed: int = 0) -> tuple[object, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 12))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    return LogisticRegression(C=1.0, max_iter=1000).fit(x, y), rng.normal(size=(50, 12)) * 10


def test_stored_model_predicts_what_sklearn_does(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is part of the CPU install (constraints/cpu.txt)")
    clf, x = _sklearn_fit()
    path = tmp_path / "judge.npz"
    model = save_linear(path, clf, KEY, {"C": 1.0, "threshold": 0.45, "cv": {"kappa": 0.8}})
    np.testing.assert_allclose(model.predict_proba(x), clf.predict_proba(x), rtol=0, atol=1e-12)
    loaded, chosen = load_linear(path, KEY)
    assert chosen == {"C": 1.0, "threshold": 0.45, "cv": {"kappa": 0.8}}
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert list(loaded.classes_) == [0, 1]
    # Fitted for another key (other labels, another version): read as missing, so the judge refits.
    assert load_linear(path, KEY | {"version": "3"}) is None
    with pytest.raises(ValueError, match="not a binary linear model"):
        LinearModel(np.zeros((2, 3)), np.zeros(2), np.arange(3)).check()


def test_stored_three_class_model_predicts_what_sklearn_does(tmp_path: Path) -> None:
    """The trained judges' three outcomes (refused, complied, non_answer): a multinomial model round-trips."""
    pytest.importorskip("sklearn", reason="scikit-learn is part of the CPU install (constraints/cpu.txt)")
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    y = np.argmax(x[:, :3] + rng.normal(scale=0.3, size=(300, 3)), axis=1)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    model = save_linear(tmp_path / "j3.npz", clf, KEY, {"C": 1.0})
    probe = rng.normal(size=(40, 8)) * 30  # large logits: the softmax must not overflow
    np.testing.assert_allclose(model.predict_proba(probe), clf.predict_proba(probe), rtol=0, atol=1e-9)
    loaded, _ = load_linear(tmp_path / "j3.npz", KEY)
    assert list(loaded.classes_) == [0, 1, 2]
    np.testing.assert_array_equal(loaded.predict_proba(probe), model.predict_proba(probe))


def test_a_planted_pickle_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "judge.npz", marker)
    assert load_linear(tmp_path / "judge.npz", KEY) is None
    # An .npz whose member is an object array needs pickle to load: refused too.
    np.savez(tmp_path / "objects.npz", header=np.array("{}"), coef=np.array([_Planted(marker)], dtype=object),
             intercept=np.zeros(1), classes=np.arange(2))
    assert load_linear(tmp_path / "objects.npz", KEY) is None
    assert not marker.exists()


def test_trained_judge_refits_over_planted_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn is part of the CPU install (constraints/cpu.txt)")
    from pipelines.evaluate.judges import make_judge
    from pipelines.evaluate.judges.labels import human_labels

    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    # C and threshold given: no cross-validated choice, so the real fit takes seconds.
    judge = make_judge("trained-minilm", train_limit=40, C=1.0, threshold=0.5)
    path = judge.cache_path()
    assert path.suffix == ".npz"
    marker = tmp_path / "pwned"
    _plant(path, marker)  # where the cache is now
    _plant(path.with_suffix(".joblib"), marker)  # where the old code cached it (and unpickled it)
    items = human_labels(6).items
    scores = [v.score for v in judge.judge(items)]
    assert not marker.exists()
    assert len(scores) == 6 and all(0.0 <= s <= 1.0 for s in scores)
    again = make_judge("trained-minilm", train_limit=40, C=1.0, threshold=0.5)
    monkeypatch.setattr(type(again), "fit", lambda self: pytest.fail("refitted instead of loading the cache"))
    assert [v.score for v in again.judge(items)] == pytest.approx(scores, abs=1e-12)
    assert not marker.exists()
