"""What a resumable checkpoint reads back runs no code (issue #19, point 6): the RNG states are tensors and
numbers loaded by torch's weights-only unpickler, DeepSpeed's own files are loaded with that unpickler
forced on, and a pickle planted in the RNG file's place is never executed (the cell starts again instead).
That a resumed run still matches an uninterrupted one to the bit is test_finetune_local.py's resume test."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.finetune import checkpoints as ck


class _Planted:
    """Unpickling this creates `marker`: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.random()), torch.rand(3).tolist()


def test_rng_state_round_trips_through_the_weights_only_loader(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached Gaussian is part of Python's state
    path = tmp_path / "rank_0.pt"
    torch.save(ck._rng_state(), path)
    expected = _draws()
    state = ck.read_rng_state(path)
    assert state is not None and state["format"] == ck.RNG_FORMAT
    ck._set_rng_state(state)
    assert _draws() == expected


def test_a_planted_pickle_in_the_rng_file_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint"
    (ckpt / ck.RNG_DIR).mkdir(parents=True)
    ck.write_state(ckpt, {"step": 2, "losses": [1.0, 0.9], "final": False})
    # Both shapes a pickle can take there: torch.save of an object (what the old code wrote) and a bare pickle.
    torch.save({"python": _Planted(marker)}, ckpt / ck.RNG_DIR / "rank_0.pt")
    (ckpt / ck.RNG_DIR / "rank_1.pt").write_bytes(pickle.dumps(_Planted(marker)))
    for rank in (0, 1):
        assert ck.read_rng_state(ckpt / ck.RNG_DIR / f"rank_{rank}.pt") is None
        # Not resumed from: the engine is never asked to load (None would fail if it were), step 0 again.
        assert ck.load_resume_state(None, ckpt, rank) == ck.fresh_state()
    assert not marker.exists()


def test_deepspeed_loads_go_through_the_weights_only_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "x": _Planted(marker)}, path)
    with ck._weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)  # what DeepSpeed's checkpoint engine calls
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 2}, plain)
    with ck._weights_only_loads():
        assert torch.load(plain, weights_only=False)["global_steps"] == 2
    import os

    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the load
