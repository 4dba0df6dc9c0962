"""Cells: one (model, fine-tune language | base, seed, epochs) each. The base model is a cell too. The
hashes that name their outputs, and the Study that carries them with the config and the workdir."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cluster.tracking import Tracking
from pipelines.config import StudyConfig
from pipelines.hashing import file_sha256, stable_hash
from pipelines.layout import Workdir
from pipelines.secrets import hash_view
from pipelines.translate.plan import Plan, datasets_key, plan_jobs

BASE = "base"
# Where a cell's evaluation runs, not what it measures (left out of the cell's hash).
EVAL_RESOURCES = frozenset({"num_gpus", "num_cpus", "memory_gb"})


@dataclass(frozen=True)
class Cell:
    model: str
    ft_lang: str  # a language code, or "base" for the untouched model
    seed: int = 0
    epochs: int = 0

    @property
    def is_base(self) -> bool:
        return self.ft_lang == BASE

    @property
    def id(self) -> str:
        # Deterministic names: Tune trial names and MLflow run names are derived from them, so a
        # resumed sweep finds its own trials again.
        if self.is_base:
            return f"{self.model}__base"
        return f"{self.model}__{self.ft_lang}__s{self.seed}__e{self.epochs}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ANSWER_SCHEME = "outcomes-3"


def study_cells(cfg: StudyConfig) -> list[Cell]:
    cells: list[Cell] = []
    for model in cfg.models:
        cells.append(Cell(model, BASE))
        cells += [Cell(model, lang, seed, ep) for lang in cfg.ft_langs for seed in cfg.seeds for ep in cfg.epochs]
    return cells


def train_hash(cfg: StudyConfig, cell: Cell, datasets_hash: str) -> str:
    """Names checkpoints/<hash>: what the fine-tuned weights depend on (not the evaluation settings, so
    adding an eval language or changing the judge retrains nothing)."""
    # How a cell runs (retries, CPUs, checkpoint cadence) does not change what it learns.
    ft = hash_view(cfg.finetune.model_dump(mode="json",
                                           exclude={"max_failures", "cpus_per_worker", "checkpoint_every_steps",
                                                    "dist_backend"}))
    return stable_hash({"cell": cell.to_dict(), "datasets": datasets_hash, "finetune": ft})


def cell_key(cfg: StudyConfig, cell: Cell, datasets_hash: str) -> dict[str, Any]:
    """Everything a cell's evaluation outputs depend on; its hash names cells/<hash>. Secrets (a remote
    judge's token, a backend's API key) are left out: a rotated token answers the same, so it re-runs
    nothing (hash_view is the identity on options without secrets, so other hashes are unchanged)."""
    return hash_view({
        "cell": cell.to_dict(),
        "weights": None if cell.is_base else train_hash(cfg, cell, datasets_hash),
        "datasets": datasets_hash,
        "eval_langs": cfg.eval_langs,
        "generate": cfg.generate.model_dump(mode="json", exclude={"threads", "batch_size"}),
        "judge": cfg.judge.model_dump(mode="json"),
        # What a judged answer is: three outcomes (refused, complied, non_answer), judged in the language
        # the answer is written in. A cell judged before (two labels) is judged again, not reused.
        "answers": ANSWER_SCHEME,
        **evaluate_key(cfg),
    })


def evaluate_key(cfg: StudyConfig) -> dict[str, Any]:
    """What a cell measures beyond the unsafe prompts (safe prompts, perplexity, drift sizes, user files),
    resources left out."""
    return {
        "evaluate": cfg.evaluate.model_dump(mode="json", exclude=set(EVAL_RESOURCES)),
        # A user file edited in place must not reuse the numbers measured on its old contents.
        "user_files": {p: _sha256(p) for p in (cfg.evaluate.mmlu_path, cfg.evaluate.alpacaeval_path) if p},
    }


def _sha256(path: str) -> str | None:
    return file_sha256(path) if Path(path).is_file() else None


def cell_dir(wd: Workdir | Path, cfg: StudyConfig, cell: Cell, datasets_hash: str) -> Path:
    """cells/<cell hash>: the cell's evaluation outputs and manifest."""
    return Workdir.of(wd).cell(cell_hash(cfg, cell, datasets_hash))


def checkpoint_dir(wd: Workdir | Path, cfg: StudyConfig, cell: Cell, datasets_hash: str) -> Path:
    """checkpoints/<train hash>: the cell's fine-tuned weights."""
    return Workdir.of(wd).checkpoint(train_hash(cfg, cell, datasets_hash))


def study_hashes(cfg: StudyConfig, jobs: Plan | None = None) -> tuple[str, str]:
    """(datasets hash, study hash), computed without Ray or any model, from the translation plan (planned
    here when not given: planning loads the data sets)."""
    ds_hash = stable_hash(datasets_key(cfg, plan_jobs(cfg) if jobs is None else jobs))
    cells = [cell_hash(cfg, c, ds_hash) for c in study_cells(cfg)]
    return ds_hash, stable_hash({"datasets": ds_hash, "cells": cells, "eval_langs": cfg.eval_langs})


def cell_hash(cfg: StudyConfig, cell: Cell, datasets_hash: str) -> str:
    return stable_hash(cell_key(cfg, cell, datasets_hash))


@dataclass(frozen=True)
class Study:
    """One study's shared values, named once: the config, the workdir, the hashes that name its outputs
    and, once the translate stage and MLflow are set up, the translated data sets and the tracking store.
    The sweep carries it whole, to its Ray workers too (`to_json`)."""

    cfg: StudyConfig
    wd: Workdir
    ds_hash: str
    study_hash: str
    ds_path: Path | None = None
    tracking: Tracking | None = None

    @classmethod
    def of(cls, cfg: StudyConfig, wd: Workdir, jobs: Plan | None = None) -> Study:
        """The study of `cfg` in `wd`, its hashes computed once, from the translation plan `jobs`."""
        return cls(cfg, wd, *study_hashes(cfg, jobs))

    def running(self, ds_path: Path, tracking: Tracking) -> Study:
        """The study with its translated data sets and its tracking store: what the sweep needs."""
        return replace(self, ds_path=ds_path, tracking=tracking)

    def cells(self) -> list[Cell]:
        return study_cells(self.cfg)

    def cell_dir(self, cell: Cell) -> Path:
        return cell_dir(self.wd, self.cfg, cell, self.ds_hash)

    def checkpoint_dir(self, cell: Cell) -> Path:
        return checkpoint_dir(self.wd, self.cfg, cell, self.ds_hash)

    def to_json(self) -> dict[str, Any]:
        """What a Ray worker is handed: plain values it rebuilds the Study from (`from_json`)."""
        return {"cfg": self.cfg.model_dump(mode="json"), "workdir": str(self.wd.root), "ds_hash": self.ds_hash,
                "study_hash": self.study_hash, "ds_path": None if self.ds_path is None else str(self.ds_path),
                "tracking": None if self.tracking is None else asdict(self.tracking)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Study:
        return cls(StudyConfig.model_validate(d["cfg"]), Workdir(Path(d["workdir"])), d["ds_hash"], d["study_hash"],
                   None if d["ds_path"] is None else Path(d["ds_path"]),
                   None if d["tracking"] is None else Tracking(**d["tracking"]))
