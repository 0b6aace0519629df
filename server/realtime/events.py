"""OpenAI's Realtime API for transcription sessions on the wire: client events in, server
events out, and the session object both ways (GA shape, and the beta one some clients
still speak).

Client events are read leniently, the way ``server.forms`` reads forms: fields this
server does not know are ignored, a field it knows must have a value it can use. A
``session.update`` changes only the fields it carries, so its Structs default every
field to ``UNSET`` (absent) as distinct from ``None`` (sent as null: "turn this off").
A bad event never ends the session: :class:`EventError` becomes an ``error`` event
naming the offending field and the client's ``event_id``.

The beta protocol (``transcription_session.update`` with ``input_audio_format``,
``input_audio_transcription``, ``turn_detection`` at the top of the session; the
server's ``transcription_session.created`` / ``.updated``) is what clients written in
2025 send, Home Assistant bridges among them; it is mapped onto the same
:class:`SessionPatch` and answered in its own shape.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Final

import msgspec
from msgspec import UNSET, UnsetType

from models.vad_stream import TurnSettings
from server.realtime.audio_in import FORMATS, INPUT_RATES, InputFormat

LOGPROBS_INCLUDE: Final = "item.input_audio_transcription.logprobs"

SEMANTIC_SILENCE_MS: Final = {"low": 1000, "medium": 500, "auto": 500, "high": 300}
"""``semantic_vad`` runs as ``server_vad``; its eagerness picks the silence that ends a turn."""

CONVERSATION_EVENTS: Final = frozenset(
    {
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
    }
)
"""Events of conversation sessions: understood, and refused in a transcription session."""

CLIENT_EVENTS: Final = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


def new_id(prefix: str) -> str:
    """OpenAI-style ids: ``event_…``, ``item_…``, ``sess_…`` (prefix and 24 hex digits)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class EventError(Exception):
    """A client event this server cannot act on; the session goes on."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


# -- the session's settings --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcription:
    model: str
    language: str | None = None
    prompt: str | None = None


DEFAULT_TURNS: Final = TurnSettings()
"""OpenAI's ``server_vad`` defaults: threshold 0.5, 300 ms of padding, 500 ms of silence."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What a session runs with: the effective configuration after every update."""

    format: InputFormat = "pcm16"
    transcription: Transcription | None = None
    turn_detection: TurnSettings | None = DEFAULT_TURNS
    logprobs: bool = False


# -- session.update, as received ---------------------------------------------------


class FormatIn(msgspec.Struct, kw_only=True):
    type: str
    rate: int | None = None


class TranscriptionIn(msgspec.Struct, kw_only=True):
    model: str | UnsetType | None = UNSET
    language: str | UnsetType | None = UNSET
    prompt: str | UnsetType | None = UNSET


class TurnDetectionIn(msgspec.Struct, kw_only=True):
    type: str = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: str | None = None


class AudioInputIn(msgspec.Struct, kw_only=True):
    format: FormatIn | str | UnsetType = UNSET
    transcription: TranscriptionIn | UnsetType | None = UNSET
    turn_detection: TurnDetectionIn | UnsetType | None = UNSET


class AudioIn(msgspec.Struct, kw_only=True):
    input: AudioInputIn | UnsetType = UNSET


class SessionIn(msgspec.Struct, kw_only=True):
    """GA ``session.update``'s ``session`` (and beta's fields, mapped by :func:`beta_patch`)."""

    type: str | UnsetType = UNSET
    audio: AudioIn | UnsetType = UNSET
    include: list[str] | UnsetType | None = UNSET


class BetaSessionIn(msgspec.Struct, kw_only=True):
    """Beta ``transcription_session.update``'s ``session``."""

    input_audio_format: str | UnsetType = UNSET
    input_audio_transcription: TranscriptionIn | UnsetType | None = UNSET
    turn_detection: TurnDetectionIn | UnsetType | None = UNSET
    include: list[str] | UnsetType | None = UNSET


def read_session_update(event: dict[str, Any], beta: bool) -> SessionIn:
    """The update's ``session`` as a :class:`SessionIn`, or :class:`EventError` naming the field."""
    raw = event.get("session", {})
    prefix = "session"
    try:
        if beta or event.get("type") == "transcription_session.update":
            return _from_beta(msgspec.convert(raw, BetaSessionIn))
        return msgspec.convert(raw, SessionIn)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = re.search(r"at `\$(.*)`$", message)
        param = prefix + (match.group(1) if match else "")
        raise EventError(
            f"Invalid session: {message}", code="invalid_value", param=param.replace("[", ".[")
        ) from exc


def _from_beta(beta: BetaSessionIn) -> SessionIn:
    audio_input = AudioInputIn(
        format=beta.input_audio_format,
        transcription=beta.input_audio_transcription,
        turn_detection=beta.turn_detection,
    )
    return SessionIn(type="transcription", audio=AudioIn(input=audio_input), include=beta.include)


def apply_update(config: SessionConfig, update: SessionIn) -> SessionConfig:
    """``config`` with what ``update`` carries changed; the model name is left unresolved."""
    if not isinstance(update.type, UnsetType) and update.type != "transcription":
        raise EventError(
            f"Invalid value: '{update.type}'. This server serves transcription sessions "
            "only (connect with ?intent=transcription and send session.type 'transcription').",
            code="invalid_value",
            param="session.type",
        )
    if not isinstance(update.include, UnsetType):
        unknown = [name for name in update.include or () if name != LOGPROBS_INCLUDE]
        if unknown:
            raise EventError(
                f"Invalid value: '{unknown[0]}'. Supported values are: '{LOGPROBS_INCLUDE}'.",
                code="invalid_value",
                param="session.include",
            )
        config = replace(config, logprobs=LOGPROBS_INCLUDE in (update.include or ()))
    if isinstance(update.audio, UnsetType) or isinstance(update.audio.input, UnsetType):
        return config
    audio = update.audio.input
    if not isinstance(audio.format, UnsetType):
        config = replace(config, format=_format(audio.format))
    if not isinstance(audio.transcription, UnsetType):
        config = replace(config, transcription=_transcription(config, audio.transcription))
    if not isinstance(audio.turn_detection, UnsetType):
        config = replace(config, turn_detection=_turns(audio.turn_detection))
    return config


def _format(value: FormatIn | str) -> InputFormat:
    name = value if isinstance(value, str) else value.type
    param = "session.audio.input.format" + ("" if isinstance(value, str) else ".type")
    if name not in FORMATS:
        raise EventError(
            f"Invalid value: '{name}'. Supported values are: 'audio/pcm', 'audio/pcmu', "
            "'audio/pcma'.",
            code="invalid_value",
            param=param,
        )
    fmt = FORMATS[name]
    rate = INPUT_RATES[fmt]
    if isinstance(value, FormatIn) and value.rate is not None and value.rate != rate:
        raise EventError(
            f"Invalid value: {value.rate}. {name} is taken at {rate} Hz only.",
            code="invalid_value",
            param="session.audio.input.format.rate",
        )
    return fmt


def _transcription(config: SessionConfig, value: TranscriptionIn | None) -> Transcription | None:
    if value is None:
        return None
    current = config.transcription or Transcription(model="")
    model = current.model if isinstance(value.model, UnsetType) else value.model
    language = current.language if isinstance(value.language, UnsetType) else value.language
    prompt = current.prompt if isinstance(value.prompt, UnsetType) else value.prompt
    return Transcription(model=model or "", language=language or None, prompt=prompt or None)


def _turns(value: TurnDetectionIn | None) -> TurnSettings | None:
    if value is None:
        return None
    defaults = TurnSettings()
    silence = defaults.silence_duration_ms
    if value.type == "semantic_vad":
        silence = SEMANTIC_SILENCE_MS.get(value.eagerness or "auto", silence)
    elif value.type != "server_vad":
        raise EventError(
            f"Invalid value: '{value.type}'. Supported values are: 'server_vad', 'semantic_vad'.",
            code="invalid_value",
            param="session.audio.input.turn_detection.type",
        )
    threshold = defaults.threshold if value.threshold is None else value.threshold
    padding = (
        defaults.prefix_padding_ms if value.prefix_padding_ms is None else value.prefix_padding_ms
    )
    if value.silence_duration_ms is not None:
        silence = value.silence_duration_ms
    checks = (
        ("threshold", 0.0 <= threshold <= 1.0, "between 0 and 1"),
        ("prefix_padding_ms", 0 <= padding <= 10_000, "between 0 and 10000"),
        ("silence_duration_ms", 0 <= silence <= 10_000, "between 0 and 10000"),
    )
    for name, ok, what in checks:
        if not ok:
            raise EventError(
                f"Invalid value for turn_detection.{name}: it must be {what}.",
                code="invalid_value",
                param=f"session.audio.input.turn_detection.{name}",
            )
    return TurnSettings(threshold=threshold, prefix_padding_ms=padding, silence_duration_ms=silence)


# -- the session object, as sent ---------------------------------------------------

FORMAT_OUT: Final[dict[InputFormat, dict[str, Any]]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}
BETA_FORMAT_OUT: Final[dict[InputFormat, str]] = {
    "pcm16": "pcm16",
    "pcmu": "g711_ulaw",
    "pcma": "g711_alaw",
}


def _transcription_out(config: SessionConfig) -> dict[str, Any] | None:
    t = config.transcription
    if t is None:
        return None
    return {"model": t.model, "language": t.language, "prompt": t.prompt}


def _turns_out(config: SessionConfig) -> dict[str, Any] | None:
    turns = config.turn_detection
    if turns is None:
        return None
    return {
        "type": "server_vad",
        "threshold": turns.threshold,
        "prefix_padding_ms": turns.prefix_padding_ms,
        "silence_duration_ms": turns.silence_duration_ms,
    }


def session_object(
    session_id: str, config: SessionConfig, expires_at: int, beta: bool
) -> dict[str, Any]:
    """The session as ``session.created`` / ``.updated`` carry it (or the beta events)."""
    include = [LOGPROBS_INCLUDE] if config.logprobs else None
    if beta:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "expires_at": expires_at,
            "input_audio_format": BETA_FORMAT_OUT[config.format],
            "input_audio_transcription": _transcription_out(config),
            "turn_detection": _turns_out(config),
            "input_audio_noise_reduction": None,
            "include": include,
        }
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "type": "transcription",
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": FORMAT_OUT[config.format],
                "noise_reduction": None,
                "transcription": _transcription_out(config),
                "turn_detection": _turns_out(config),
            }
        },
        "include": include,
    }


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: its type, a fresh ``event_id``, then its fields."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: EventError, client_event_id: str | None) -> dict[str, Any]:
    return server_event(
        "error",
        error={
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        },
    )


def expires_at(seconds: float) -> int:
    return int(time.time() + seconds)
