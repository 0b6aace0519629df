"""OpenAI's audio API on the wire: request forms and response bodies, as msgspec Structs.

Request Structs forbid unknown fields, so a misspelt parameter is a 400 that names
it rather than a silently ignored option. Field names are the wire names,
including the SDK's ``name[]`` spelling of list fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranscriptionForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields of ``POST /v1/audio/transcriptions`` besides ``file``."""

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    timestamp_granularities: list[Literal["segment", "word"]] = msgspec.field(
        default_factory=list, name="timestamp_granularities[]"
    )
    include: list[Literal["logprobs"]] = msgspec.field(default_factory=list, name="include[]")
    stream: bool = False
    chunking_strategy: Literal["auto"] | dict[str, Any] | None = None


class Usage(msgspec.Struct, kw_only=True):
    type: str = "duration"
    seconds: int


class TranscriptionJSON(msgspec.Struct):
    text: str
    usage: Usage


class ModelObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "voxserve"


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelObject]
