"""How many floors the house stands on: the longest chain of rooms each importing the next (module-level
imports; a package under pipelines/ or a top-level package is one room), as tests/test_layout.py counts
it, for this checkout or another one (an older revision in a git worktree, say).

    .venv/bin/python benchmarks/layout/floors.py [DIR]      # DIR: a checkout (default: this one)"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))

import test_layout  # noqa: E402


def chain(repo: Path) -> list[str]:
    """The longest chain of rooms, top floor first."""
    test_layout.REPO = repo.resolve()
    rooms = test_layout.rooms()

    @cache
    def floor(r: str) -> int:
        return 1 + max((floor(t) for t in rooms.get(r, ())), default=0)

    out = [max(rooms, key=floor)]
    while rooms.get(out[-1]):
        out.append(max(rooms[out[-1]], key=floor))
    return out


if __name__ == "__main__":
    rooms = chain(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent)
    print(f"{len(rooms)} floors: " + " -> ".join(rooms))
