"""Render a transcript in the ``response_format`` the client asked for.

One renderer per format, each returning the body and its content type, shaped
as OpenAI's are: ``json`` carries ``usage`` (and ``logprobs`` when asked), the
subtitle formats number and time each segment, ``verbose_json`` has Whisper's own
segment measures and the words when asked. Translations answer the same shapes
less ``usage``, and report the output language, English.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from models.base import Segment, TokenLogprob
from models.languages import language_name
from server.protocol import (
    SegmentJSON,
    TokenLogprobJSON,
    TranscriptionJSON,
    Usage,
    VerboseJSON,
    WordJSON,
)
from server.transcription import Transcript

Rendered = tuple[bytes, str]
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """The request fields that shape the body beyond its format."""

    segments: bool = True
    """``timestamp_granularities`` asked for segments (or did not say)."""
    words: bool = False
    logprobs: bool = False


def _json(transcript: Transcript, options: RenderOptions) -> Rendered:
    if transcript.task == "translate":
        return msgspec.json.encode(TranscriptionJSON(text=transcript.text)), JSON_TYPE
    body = TranscriptionJSON(
        text=transcript.text,
        logprobs=logprobs_json(transcript.logprobs) if options.logprobs else None,
        usage=usage_of(transcript),
    )
    return msgspec.json.encode(body), JSON_TYPE


def _text(transcript: Transcript, options: RenderOptions) -> Rendered:
    return (transcript.text + "\n").encode(), TEXT_TYPE


def _srt(transcript: Transcript, options: RenderOptions) -> Rendered:
    cues = [
        f"{n}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for n, s in enumerate(_spoken(transcript.segments), start=1)
    ]
    return "\n".join(cues).encode(), TEXT_TYPE


def _vtt(transcript: Transcript, options: RenderOptions) -> Rendered:
    cues = [
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in _spoken(transcript.segments)
    ]
    return "\n".join(["WEBVTT\n", *cues]).encode(), TEXT_TYPE


def _verbose_json(transcript: Transcript, options: RenderOptions) -> Rendered:
    translating = transcript.task == "translate"
    body = VerboseJSON(
        task=transcript.task,
        language=language_name("en" if translating else transcript.language),
        duration=round(transcript.duration, 3),
        text=transcript.text,
        segments=segments_json(transcript.segments) if options.segments else None,
        words=[WordJSON(word=w.word.strip(), start=w.start, end=w.end) for w in transcript.words]
        if options.words
        else None,
        usage=None if translating else usage_of(transcript),
    )
    return msgspec.json.encode(body), JSON_TYPE


RENDERERS: dict[str, Callable[[Transcript, RenderOptions], Rendered]] = {
    "json": _json,
    "text": _text,
    "srt": _srt,
    "verbose_json": _verbose_json,
    "vtt": _vtt,
}


def render(transcript: Transcript, response_format: str, options: RenderOptions) -> Rendered:
    return RENDERERS[response_format](transcript, options)


def usage_of(transcript: Transcript) -> Usage:
    return Usage(seconds=transcript.billed_seconds)


def segments_json(segments: Sequence[Segment]) -> list[SegmentJSON]:
    return [
        SegmentJSON(
            id=n,
            seek=s.seek,
            start=s.start,
            end=s.end,
            text=s.text,
            tokens=list(s.tokens),
            temperature=s.temperature,
            avg_logprob=round(s.avg_logprob, 6),
            compression_ratio=round(s.compression_ratio, 6),
            no_speech_prob=round(s.no_speech_prob, 6),
        )
        for n, s in enumerate(segments)
    ]


def logprobs_json(tokens: Sequence[TokenLogprob]) -> list[TokenLogprobJSON]:
    return [
        TokenLogprobJSON(token=t.token, logprob=round(t.logprob, 6), bytes=list(t.bytes))
        for t in tokens
    ]


def timestamp(seconds: float, decimal_marker: str) -> str:
    """``HH:MM:SS,mmm`` (SubRip) or ``HH:MM:SS.mmm`` (WebVTT)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _spoken(segments: Sequence[Segment]) -> list[Segment]:
    return [s for s in segments if s.text.strip()]
