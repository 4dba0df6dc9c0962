"""The sweep finds its cells' MLflow runs on every page of the server's answer, not only the first."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pipelines.run import _child_runs


class Paged(list):
    def __init__(self, items: list[Any], token: str | None) -> None:
        super().__init__(items)
        self.token = token


class PagingClient:
    """Answers search_runs in pages of `size`, as an MLflow server with a page limit does."""

    def __init__(self, n: int, size: int) -> None:
        self.runs = [SimpleNamespace(data=SimpleNamespace(tags={"safedrift.cell": f"cell-{i}"}),
                                     info=SimpleNamespace(run_id=f"run-{i}")) for i in range(n)]
        self.size, self.calls = size, 0

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int,
                    page_token: str | None) -> Paged:
        assert filter_string == "tags.mlflow.parentRunId = 'parent'" and experiment_ids == ["1"]
        self.calls += 1
        start = int(page_token or 0)
        end = start + min(self.size, max_results)
        return Paged(self.runs[start:end], str(end) if end < len(self.runs) else None)


def test_every_page_of_child_runs_is_read() -> None:
    client = PagingClient(n=330, size=100)
    got = _child_runs(client, "1", "parent")
    assert client.calls == 4
    assert got == {f"cell-{i}": f"run-{i}" for i in range(330)}
