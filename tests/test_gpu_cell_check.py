"""benchmarks/gpu/cell_check.py (issue #17 point 8) works before any GPU session: its --device cpu --tiny
mode runs the same code path (multi-adapter generation, the SORRY-Bench template, a LoRA step) here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cell_check_runs_on_cpu_tiny(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu/cell_check.py", "--device", "cpu", "--tiny", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    gen = res["generation"]
    assert gen["mixed_batch_equals_each_adapter_alone"] and gen["one_bos_per_prompt"]
    assert gen["adapters_change_answers"] and gen["new_tokens_per_s"] > 0
    assert res["sorry_bench"]["outputs"] == res["sorry_bench"]["items"] > 0
    assert res["lora"]["finite"] and res["lora"]["tokens_per_s"] > 0
