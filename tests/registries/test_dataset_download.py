"""The download fallback fetches every file a data set needs (issue #17 point 5): hplt_oasst reads ten
sibling files beside test_en.jsonl, so fetching only the main file left the loader failing on the
first sibling. Served from a real HTTP server on 127.0.0.1 with the mirror's own bytes."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.errors import DataError
from pipelines.layout import data_dir
from pipelines.registries import datasets


@pytest.fixture
def upstream(tmp_path: Path):
    """A stand-in for GitHub's raw file server: /raw/<dir>/<file> for the mirror's hplt_oasst files."""
    spec = datasets.DATASETS.get("hplt_oasst")
    served = tmp_path / "served" / "raw" / "oasst"
    served.mkdir(parents=True)
    for rel, _, _ in datasets.files_of(spec):
        shutil.copy(data_dir() / rel, served / Path(rel).name)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield spec, f"http://127.0.0.1:{server.server_address[1]}/blob/oasst", served
    server.shutdown()
    thread.join(timeout=10)


def test_fetch_brings_every_sibling_and_the_loader_reads_them(upstream, tmp_path: Path) -> None:
    spec, base, _ = upstream
    remote = dataclasses.replace(spec, url=f"{base}/test_en.jsonl")
    main = datasets.fetch_files(remote, tmp_path / "mirror")
    fetched = sorted(p.name for p in main.parent.iterdir())
    assert fetched == sorted(["test_en.jsonl", *spec.extra_sha256])
    rows = spec.loader(main, spec)
    assert len(rows) == 50 and any("zh" in r["refs"] for r in rows)


def test_a_changed_upstream_file_is_refused(upstream, tmp_path: Path) -> None:
    spec, base, served = upstream
    (served / "test_zh.jsonl").write_text('{"id": "x", "prompt": "changed"}\n')
    remote = dataclasses.replace(spec, url=f"{base}/test_en.jsonl")
    with pytest.raises(DataError, match="test_zh.jsonl has sha256"):
        datasets.fetch_files(remote, tmp_path / "mirror")
    assert not (tmp_path / "mirror" / "overrefusal" / "hplt_oasst_test" / "test_zh.jsonl").exists()
