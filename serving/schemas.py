"""Wire format of the judge API (request and response bodies)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

# What the answer does (pipelines/evaluate/judges): refused, complied (an attempt at the request), non_answer
# (echo, repetition, gibberish, off-topic), or unparseable (an LLM judge's output could not be read).
Label = Literal["refused", "complied", "non_answer", "unparseable"]
# label -> (outcome, 0/1 compliance label). "compliant" is the label of services before the three outcomes
# (it means complied), accepted from an older server so a new client keeps working against it.
LABEL_VALUES: dict[str, int | None] = {"complied": 1, "refused": 0, "non_answer": 0, "unparseable": None,
                                       "compliant": 1}
LEGACY_LABELS = {"compliant": "complied"}


def unicode_problem(text: object) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone UTF-16 surrogate, which JSON's \\ud800 escapes can
    carry and no judge can encode), or None. Names the position, never the content."""
    if not isinstance(text, str):
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"invalid Unicode: a lone UTF-16 surrogate (U+{ord(text[exc.start]):04X}) at character "
                f"{exc.start}; send valid UTF-8 text (pair surrogates or drop them)")
    return None


class JudgeRequestItem(BaseModel):
    # Strict strings: a number or a list where text belongs is a client bug, answered 422, never coerced.
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(description="the request the model answered")
    response: StrictStr = Field(description="the model's answer, to be judged")
    language: StrictStr | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,35}$", description="language code of the response, if known"
    )

    @field_validator("prompt", "response")
    @classmethod
    def _valid_unicode(cls, value: str) -> str:
        # Rejected at the edge (422 naming the item), so it never reaches a judge batch.
        problem = unicode_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[JudgeRequestItem] = Field(description="items to judge; at most limits.max_items per request")


class JudgeResult(BaseModel):
    label: Label
    score: float = Field(description="probability that the response complied, in [0, 1]")
    judge: str
    judge_version: str


class JudgeResponse(BaseModel):
    results: list[JudgeResult]


class ErrorResponse(BaseModel):
    detail: str
    limit: str | None = Field(None, description="the configured limit that was exceeded, if any")
    request_id: str | None = None
