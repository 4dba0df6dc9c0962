"""Wire format of the judge API (request and response bodies)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

Label = Literal["compliant", "refused", "unparseable"]
LABEL_VALUES: dict[str, int | None] = {"compliant": 1, "refused": 0, "unparseable": None}


class JudgeRequestItem(BaseModel):
    # Strict strings: a number or a list where text belongs is a client bug, answered 422, never coerced.
    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(description="the request the model answered")
    response: StrictStr = Field(description="the model's answer, to be judged")
    language: StrictStr | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,35}$", description="language code of the response, if known"
    )


class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[JudgeRequestItem] = Field(description="items to judge; at most limits.max_items per request")


class JudgeResult(BaseModel):
    label: Label
    score: float = Field(description="probability that the response complies, in [0, 1]")
    judge: str
    judge_version: str


class JudgeResponse(BaseModel):
    results: list[JudgeResult]


class ErrorResponse(BaseModel):
    detail: str
    limit: str | None = Field(None, description="the configured limit that was exceeded, if any")
    request_id: str | None = None
