"""Render a transcript in the ``response_format`` the client asked for.

One renderer per format, each returning the body and its content type. Formats
that are part of OpenAI's API but not rendered yet are refused up front by
:func:`check_format`, so no work is spent on a request that cannot be answered.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from server.errors import InvalidRequest
from server.protocol import TranscriptionJSON, Usage
from server.transcription import Transcript

Rendered = tuple[bytes, str]


def _json(transcript: Transcript) -> Rendered:
    body = TranscriptionJSON(text=transcript.text, usage=Usage(seconds=transcript.billed_seconds))
    return msgspec.json.encode(body), "application/json"


def _text(transcript: Transcript) -> Rendered:
    return (transcript.text + "\n").encode(), "text/plain; charset=utf-8"


RENDERERS: dict[str, Callable[[Transcript], Rendered]] = {"json": _json, "text": _text}


def check_format(response_format: str) -> None:
    if response_format not in RENDERERS:
        supported = ", ".join(RENDERERS)
        raise InvalidRequest(
            f"response_format '{response_format}' is not supported by this server yet; "
            f"use one of: {supported}.",
            param="response_format",
        )


def render(transcript: Transcript, response_format: str) -> Rendered:
    check_format(response_format)
    return RENDERERS[response_format](transcript)
