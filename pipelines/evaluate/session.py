"""What one evaluation worker keeps loaded across the cells it evaluates (pipelines/sweep/evaluation.py
gives each worker all the cells of one base model): per model directory one ``LoadedModel`` and one
generation backend, and the judges. A cell's evaluation switches adapters instead of loading a model, so
a model of 55 cells is loaded once, and the judge once per worker.

A session made for a single cell (``evaluate_cell`` without one) behaves exactly as a worker's does."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.config import GenerateConfig, StudyConfig
from pipelines.evaluate.backends import Backend, make_backend
from pipelines.evaluate.judges import Judge, make_judge
from pipelines.evaluate.weights import LoadedModel


class EvalSession:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._models: dict[str, LoadedModel] = {}
        self._backends: dict[tuple[str, str], Backend] = {}
        self._judges: dict[str, tuple[Judge, Judge | None]] = {}

    def model(self, model_dir: Path) -> LoadedModel:
        key = str(Path(model_dir).resolve())
        if key not in self._models:
            self._models[key] = LoadedModel(Path(model_dir), self.threads)
        return self._models[key]

    def backend(self, model_dir: Path, gcfg: GenerateConfig) -> Backend:
        """The generation backend over this model's shared copy (one per model and generate config)."""
        key = (str(Path(model_dir).resolve()), json.dumps(gcfg.model_dump(mode="json"), sort_keys=True))
        if key not in self._backends:
            self._backends[key] = make_backend(self.model(model_dir), gcfg)
        return self._backends[key]

    def judges(self, cfg: StudyConfig) -> tuple[Judge, Judge | None]:
        """The configured judge and second judge, made once per worker."""
        key = json.dumps(cfg.judge.model_dump(mode="json"), sort_keys=True)
        if key not in self._judges:
            judge = make_judge(cfg.judge.name, **cfg.judge.options)
            second = make_judge(cfg.judge.second, **cfg.judge.second_options) if cfg.judge.second else None
            self._judges[key] = (judge, second)
        return self._judges[key]

    def loads(self) -> dict[str, int]:
        """Weight loads per model directory name (a test asserts one per base model per worker)."""
        return {Path(k).name: m.loads for k, m in self._models.items()}

    def release(self, model_dir: Path) -> None:
        """Frees one model's weights and backends (a full fine-tune's export after its cell; a base model
        when the worker moves on)."""
        key = str(Path(model_dir).resolve())
        for bkey in [k for k in self._backends if k[0] == key]:
            self._backends.pop(bkey).close()
        model = self._models.get(key)
        if model is not None:
            model.release()

    def close(self) -> None:
        for key in list(self._models):
            self.release(Path(key))
