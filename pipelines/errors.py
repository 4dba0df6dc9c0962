"""The errors a user can fix. Each names the problem and the setting, file or command that fixes it;
`safedrift` prints such an error's message and exits 2. Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class SafedriftError(Exception):
    """Base of every error a user can fix by changing the config, a file or the environment."""


class ConfigError(SafedriftError, ValueError):
    """The config (a preset, an override, a component's options) is invalid."""


class UnknownNameError(SafedriftError, KeyError):
    """An unknown registry name. The message lists the known names so the fix is obvious."""

    def __str__(self) -> str:  # KeyError would quote the message; print it plainly
        return str(self.args[0])


class DataError(SafedriftError, ValueError):
    """A data set or user file is missing, corrupt or malformed."""


class NoRouteError(SafedriftError, ValueError):
    """No translator (chain) reaches a language pair here."""


class FinetuneError(SafedriftError, ValueError):
    """A cell cannot be fine-tuned as configured (no chat template, no data left, sequences too long)."""


class SweepError(SafedriftError, RuntimeError):
    """The grid cannot run, or some of its cells failed."""


class ClusterTooSmallError(SweepError, ValueError):
    """A cell needs more than any node of the cluster has."""


class BackendMissingError(SafedriftError, ImportError):
    """A configured component needs a package that is not installed here (e.g. vLLM on a CPU machine)."""
