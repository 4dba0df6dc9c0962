"""The layout a newcomer can live in: one Workdir owns every path, one module reads the environment, the
project's modules import each other without cycles (imports inside functions and lazy registry entries
counted), the stages import each other only as the README's layout says, and the house stands on at most
12 floors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pipelines.layout import Workdir, translation_cache

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "serving", "cluster")


def _modules() -> dict[str, Path]:
    files = [p for r in PACKAGES for p in (REPO / r).rglob("*.py")]
    return {".".join(p.relative_to(REPO).with_suffix("").parts[:-1] if p.name == "__init__.py"
                     else p.relative_to(REPO).with_suffix("").parts): p for p in files}


# A registry's lazy entry, "package.module:attr", loaded on first use (pipelines.registry.load_object).
LAZY_ENTRY = re.compile(r"^((?:pipelines|serving|cluster)(?:\.\w+)*):\w+$")


def _import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports; `top_level_only`: the imports of the module's body alone
    (those inside functions are read lazily, for heavy optional libraries or a cluster's state). Otherwise
    a lazy registry entry (a string "package.module:attr") counts too, as an import of the module it names:
    the registry loads it on first use, so a plugin that imports the registry naming it is a cycle. A
    package's __init__ importing its own modules counts like any other import."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from pkg import sub` needs the submodule alone; `from mod import name`, the module.
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and (lazy := LAZY_ENTRY.match(node.value))):
                names = [lazy.group(1)]
            else:
                continue
            for n in names:
                t = resolve(n)
                if t and t != m:
                    graph[m].add(t)
    return graph


# The one loop the design holds, left out of the cycle test on purpose: the remote judge (a registry entry)
# deploys the judge service on the driver when `judge.options.deploy` asks (Judge.prepare), and the service
# judges with whichever judge its config names, through the registry. Module -> the import left out.
DEPLOYS_ITS_SERVICE = {"serving.remote_judge": "serving.app"}


def test_no_import_cycles() -> None:
    """Imports inside functions and lazy registry entries counted."""
    graph = _import_graph()
    for m, t in DEPLOYS_ITS_SERVICE.items():
        assert t in graph[m], f"{m} no longer imports {t}: drop it from DEPLOYS_ITS_SERVICE"
        graph[m].discard(t)
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(v: str, stack: list[str]) -> None:
        seen[v] = 1
        for w in sorted(graph[v]):
            if seen.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in seen:
                visit(w, [*stack, w])
        seen[v] = 2

    for v in sorted(graph):
        if v not in seen:
            visit(v, [v])
    assert cycles == []


def test_safedrift_environment_is_read_in_one_module() -> None:
    readers = []
    for m, p in _modules().items():
        if m.startswith("pipelines") and m != "pipelines.layout" and re.search(
                r"environ(?:\.get)?\(?\[?f?[\"']SAFEDRIFT_|getenv\(f?[\"']SAFEDRIFT_", p.read_text()):
            readers.append(m)
    assert readers == [], f"SAFEDRIFT_* read outside pipelines/layout.py: {readers}"


def test_workdir_paths_are_spelled_in_one_place() -> None:
    # The workdir's folder names appear as path parts only in layout.py.
    pattern = re.compile(r"""/\s*["'](?:cells|checkpoints|sweeps|reports|datasets|tune|ray_train|mlflow\.db|mlartifacts"""
                         r"""|translation_cache)["']""")
    spelled = [m for m, p in _modules().items() if m != "pipelines.layout" and pattern.search(p.read_text())]
    assert spelled == []


def test_files_are_written_atomically_in_one_place() -> None:
    # A file written whole or not at all goes through cluster/storage.py's atomic_file (a rename of a
    # temporary file written elsewhere is a second way).
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\btmp\w*\.(?:replace|rename)\(")
    writers = [m for m, p in _modules().items() if m != "cluster.storage" and pattern.search(p.read_text())]
    assert writers == []


def test_no_comment_cites_a_file_outside_the_repository() -> None:
    notes = "FIELD" + "-NOTES"  # a file beside the repository once cited; a comment states the fact instead
    files = [p for d in (*PACKAGES, "tests", "benchmarks", "infra") for p in (REPO / d).rglob("*")
             if p.suffix in {".py", ".md", ".yaml", ".sh"}]
    assert [str(p.relative_to(REPO)) for p in files if notes in p.read_text(errors="replace")] == []


def test_workdir_owns_every_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SAFEDRIFT_CACHE", raising=False)
    wd = Workdir.open(tmp_path / "w")
    assert wd.cell("abc") == tmp_path / "w" / "cells" / "abc"
    assert wd.sweep("s1", "sqlite:///x").parent == wd.study_sweeps("s1")
    assert wd.sweep("s1", "sqlite:///x") != wd.sweep("s1", "http://mlflow:5000")  # one record per store
    assert Workdir.of_sweep_dir(wd.sweep("s1", "u")) == (wd, "s1")
    assert wd.translation_cache() == wd.root / "translation_cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert translation_cache() == tmp_path / "home" / ".cache" / "safedrift" / "translation_cache"  # no workdir
    monkeypatch.setenv("SAFEDRIFT_CACHE", str(tmp_path / "shared"))
    assert wd.translation_cache() == tmp_path / "shared" / "translation_cache" == translation_cache()


def test_a_uri_workdir_is_refused_with_the_fix() -> None:
    import pytest

    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="mounted path"):
        Workdir.open("s3://bucket/work")


def test_stage_packages_have_their_entry_point_in_init() -> None:
    import pipelines.evaluate as evaluate
    import pipelines.finetune as finetune
    import pipelines.report as report
    import pipelines.sweep as sweep
    import pipelines.translate as translate

    for pkg, entry in ((translate, "build_datasets"), (finetune, "finetune_cell"), (evaluate, "evaluate_cell"),
                       (sweep, "run_sweep"), (report, "write_report")):
        assert callable(getattr(pkg, entry)), (pkg.__name__, entry)
    top = [p for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 12, sorted(p.name for p in top)


# A stage is a package under pipelines/ with a name of its own: it may import another only along the lines
# the README's layout names ("Stages use one another only so: ...").
STAGES = ("translate", "finetune", "evaluate", "align", "sweep", "report")


def _allowed_stage_imports() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    line = re.search(r"Stages use one another only so:(.*?)\n\n", text, re.S)
    assert line, "README's layout names which stages use which"
    allowed: dict[str, set[str]] = {}
    for src, dsts in re.findall(r"`(\w+) → ([\w., ]+)`", line.group(1)):
        allowed.setdefault(src, set()).update(d.strip() for d in dsts.split(","))
    return allowed


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipelines" and len(parts) > 1 and parts[1] in STAGES else None


def test_stages_import_each_other_only_as_the_readme_says() -> None:
    allowed = _allowed_stage_imports()
    wrong = []
    for m, targets in _import_graph().items():
        for t in targets:
            a, b = _stage(m), _stage(t)
            if a and b and a != b and not any(t == f"pipelines.{d}" or t.startswith(f"pipelines.{d}.")
                                              for d in allowed.get(a, ())):
                wrong.append(f"{m} -> {t}")
    assert wrong == [], "a stage imports another beyond what the README's layout names"
    assert "evaluate" not in allowed.get("finetune", ()) and "finetune" not in allowed.get("evaluate", ())


def _room(module: str) -> str:
    """What a reader sees as one room: a package under pipelines/ (a stage, registries/), a module at the
    top of pipelines/, or a whole top-level package (serving, cluster)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" else parts[0]


def rooms() -> dict[str, set[str]]:
    """Room -> the rooms it imports (module-level imports)."""
    out: dict[str, set[str]] = {}
    for m, targets in _import_graph(top_level_only=True).items():
        out.setdefault(_room(m), set()).update(_room(t) for t in targets if _room(t) != _room(m))
    return out


def floors() -> int:
    """The house's height: the longest chain of rooms each importing the next (module-level imports),
    counting the ground floor as 1."""
    graph = rooms()
    height: dict[str, int] = {}

    def floor(r: str, path: tuple[str, ...] = ()) -> int:
        assert r not in path, f"rooms import each other in a circle: {path + (r,)}"
        if r not in height:
            height[r] = 1 + max((floor(t, path + (r,)) for t in graph.get(r, ())), default=0)
        return height[r]

    return max(floor(r) for r in graph)


def test_the_house_stands_on_at_most_12_floors() -> None:
    """Module-level imports only: a lazy registry entry is loaded on first use, not when its registry is
    imported, so it adds no floor (the cycle test follows it)."""
    assert floors() <= 12
