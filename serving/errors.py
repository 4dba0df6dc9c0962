"""Errors the judge deployment raises to its callers (the ingress, or ``RemoteJudge`` through a handle).

They cross the Ray boundary as the cause of a ``RayTaskError``, which Ray makes an instance of these
classes, so callers can ``except JudgeItemError``. Their arguments are plain values (picklable), and
their messages never quote request content (item positions and exception types only).
"""

from __future__ import annotations


class JudgeItemError(ValueError):
    """One item of a request cannot be judged (the judge raised on it, or it fails the judge's checks).

    Only the request that holds the item fails; the requests merged into the same judge call with it
    are judged without it.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index, self.reason = index, reason

    def __str__(self) -> str:
        return f"items.{self.index}: {self.reason}"


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before the judge reached it: it was dropped, not judged."""

    def __init__(self, late_by_s: float) -> None:
        super().__init__(late_by_s)
        self.late_by_s = late_by_s

    def __str__(self) -> str:
        return f"deadline passed {self.late_by_s:.3f} s before the judge reached the request; not judged"


class JudgeContractError(RuntimeError):
    """A judge returned a different number of verdicts than items (a bug in the judge, not the input)."""


class JudgeUnavailable(RuntimeError):
    """The judge fails on a known-good item too: it is down or broken, not the request's items. Answered
    503 (retryable), never 422: a client must retry, and 5xx alerting must see it."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause  # the exception's type name only: its message may quote request content

    def __str__(self) -> str:
        return f"the judge is failing (it raised {self.cause} on a known-good item too); retry later"
