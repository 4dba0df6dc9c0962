"""The console of a long run: one progress view a person reads (stage, cells done of total, the current
cell's step, elapsed time and ETA), while everything Ray, Tune, Train, DeepSpeed and the libraries print
goes to a log file in the workdir, whose path is shown. Warnings of safedrift's own loggers still reach
the terminal, above the view, since they are the ones that matter to the user.

The redirection is at the file-descriptor level, so the output of Ray's worker processes (forwarded to
the driver's stdout), C extensions and subprocesses lands in the log too, not only Python's prints. On a
terminal the view is redrawn in place; elsewhere (CI, a pipe) it prints a line when the state changes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cluster import progress

OWN_LOGGERS = ("pipelines", "serving", "cluster")


def clock(seconds: float | None) -> str:
    """m:ss (h:mm:ss from an hour), rounded to the second; "–" for an unknown duration."""
    if seconds is None:
        return "–"
    seconds = round(max(0.0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class State:
    """What the view shows; updated by the study driver (stages, cells) and by the progress files."""

    title: str
    started: float = field(default_factory=time.time)
    stage: str = "starting"
    cell_manifests: list[Path] = field(default_factory=list)
    progress_dir: Path | None = None
    sweep_started: float | None = None
    done_at_start: int = 0
    # When each cell of this run was first seen done: the pace between completions, not since the sweep
    # began, estimates the rest (the grid trains every fine-tune before the evaluations finish any cell,
    # so the time to the first completion is no cell's cost).
    completed_at: list[float] = field(default_factory=list)

    def cells_done(self) -> int:
        return sum((d / "manifest.json").exists() for d in self.cell_manifests)

    def eta(self, done: int, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        total = len(self.cell_manifests)
        ran = done - self.done_at_start
        if self.stage != "sweep" or self.sweep_started is None or ran <= 0 or total == 0:
            return None
        while len(self.completed_at) < ran:
            self.completed_at.append(now)
        if len(self.completed_at) >= 2:
            first, last = self.completed_at[0], self.completed_at[-1]
            per_cell = (last - first) / (len(self.completed_at) - 1)
            return max(per_cell * (total - done) - (now - last), 0.0)
        per_cell = (now - self.sweep_started) / ran
        return per_cell * (total - done)

    def current(self) -> str:
        if self.progress_dir is None or self.stage != "sweep":
            return ""
        recent = [r for r in progress.read_all(self.progress_dir) if r.get("updated", 0) >= self.started]
        if not recent:
            return ""
        r = recent[0]
        step = f" {r['done']}/{r['total']}" if r.get("done") is not None and r.get("total") else ""
        return f"{r['cell']}: {r['stage']}{step}"

    def line(self) -> str:
        done, total = self.cells_done(), len(self.cell_manifests)
        parts = [f"{self.title}", f"stage {self.stage}"]
        if total:
            parts.append(f"cells {done}/{total}")
        if cur := self.current():
            parts.append(cur)
        parts.append(f"elapsed {clock(time.time() - self.started)}")
        if self.stage == "sweep":
            parts.append(f"ETA {clock(self.eta(done))}")
        return " · ".join(parts)


# Libraries that give their loggers a stderr handler of their own and stop propagation (transformers does
# outside CI, once anything has logged through it): while the console runs, their records go to the root's
# handlers like everyone else's — the log file, and warnings to the terminal — not to a stream the console
# no longer owns.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub")


def _route_library_loggers() -> list[tuple[logging.Logger, list[logging.Handler], bool]]:
    """Each library logger's own handlers removed and propagation on; returns what to restore."""
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers, logger.propagate = [], True
    return saved


class _ToTerminal(logging.Handler):
    """safedrift's own warnings, to the terminal (the file gets every record through the root handler)."""

    def __init__(self, emit_line: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._emit_line = emit_line

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OWN_LOGGERS:
            with contextlib.suppress(Exception):
                self._emit_line(f"{record.levelname.lower()}: {record.getMessage()}")


class StudyConsole:
    """Context manager: log file + fd redirection + the live view. `terminal` is where the person looks."""

    def __init__(self, log_dir: Path, title: str, terminal: TextIO | None = None, refresh_s: float = 1.0,
                 plain_every_s: float = 30.0) -> None:
        self.log_dir = log_dir
        self.log_path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        self.state = State(title)
        self._terminal_in = terminal
        self._refresh_s = refresh_s
        self._plain_every_s = plain_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: list[int] = []
        self._lock = threading.Lock()
        self._live: Any = None

    # ---- what the driver tells it ------------------------------------------------------------------------

    def on_event(self, kind: str, info: dict[str, Any]) -> None:
        """run_study's callback: ("study", {cell_dirs, progress_dir}), ("stage", {name})."""
        if kind == "study":
            self.state.cell_manifests = list(info.get("cell_dirs", []))
            self.state.progress_dir = info.get("progress_dir")
        elif kind == "stage":
            self.state.stage = info["name"]
            if info["name"] == "sweep":
                self.state.sweep_started = time.time()
                self.state.done_at_start = self.state.cells_done()
        self._plain(force=True)

    def print(self, text: str = "") -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False)
            else:
                self.terminal.write(text + "\n")
                self.terminal.flush()

    # ---- the context -------------------------------------------------------------------------------------

    def __enter__(self) -> StudyConsole:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # The person's terminal survives as a duplicate of fd 1; fds 1 and 2 then point at the log file,
        # and so do sys.stdout/sys.stderr and every process started from here (Ray's included).
        self.terminal = self._terminal_in or os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        self._tty = self.terminal.isatty()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        # Python's own streams follow the fds (they may have been replaced, e.g. under a test runner).
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        root = logging.getLogger()
        self._file_handler = logging.StreamHandler(open(self.log_path, "a", buffering=1, encoding="utf-8"))  # noqa: SIM115
        self._file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._term_handler = _ToTerminal(self.print)
        self._old_root = (list(root.handlers), root.level)
        root.handlers = [self._file_handler, self._term_handler]
        root.setLevel(logging.INFO)
        self._libraries = _route_library_loggers()
        logging.captureWarnings(True)  # FutureWarnings and the like: the log, not the terminal
        self.print(f"log: {self.log_path}")
        if self._tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.state.line(), console=Console(file=self.terminal), refresh_per_second=4,
                              transient=False)
            self._live.start()
        self._last_plain = ("", 0.0)
        self._thread = threading.Thread(target=self._loop, name="safedrift-console", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            self._live.update(self.state.line())
            self._live.stop()
            self._live = None
        else:
            self._plain(force=True)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._streams
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        root = logging.getLogger()
        root.handlers, level = self._old_root
        root.setLevel(level)
        for logger, handlers, propagate in self._libraries:
            logger.handlers, logger.propagate = handlers, propagate
        logging.captureWarnings(False)
        self._file_handler.close()

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            with contextlib.suppress(Exception):  # the view must never take the run down
                if self._live is not None:
                    self._live.update(self.state.line())
                else:
                    self._plain()

    def _plain(self, force: bool = False) -> None:
        """Off a terminal: a line when the stage or cell count changes, else one every plain_every_s."""
        if self._live is not None or not hasattr(self, "terminal"):
            return
        line = self.state.line()
        key = f"{self.state.stage}|{self.state.cells_done()}"
        last_key, last_t = self._last_plain if hasattr(self, "_last_plain") else ("", 0.0)
        if force or key != last_key or time.time() - last_t >= self._plain_every_s:
            self._last_plain = (key, time.time())
            self.print(line)
