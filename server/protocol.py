"""OpenAI's audio API on the wire: request forms and response bodies, as msgspec Structs.

Request Structs skip fields they do not have: ``server.forms`` finds those first and,
by the ``unknown_fields`` setting, names them in a response header or refuses them.
Objects nested in a request (a VAD setting, a voice reference) forbid unknown keys,
since their keys say which kind of object they are. Field names are the wire names,
including the SDK's ``name[]`` spelling of list fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
MAX_SPEECH_INPUT = 4096
MAX_NAME_CHARS = 256

Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
"""A model, voice or language: bounded, so that the 404 or 400 that names it stays short."""


Milliseconds = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class ServerVad(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``chunking_strategy={"type": "server_vad", ...}``, with OpenAI's defaults."""

    type: Literal["server_vad"]
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    prefix_padding_ms: Milliseconds = 300
    silence_duration_ms: Milliseconds = 200


class TranscriptionForm(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/audio/transcriptions`` besides ``file``."""

    model: Name
    language: Name | None = None
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    timestamp_granularities: list[Literal["segment", "word"]] = msgspec.field(
        default_factory=list, name="timestamp_granularities[]"
    )
    include: list[Literal["logprobs"]] = msgspec.field(default_factory=list, name="include[]")
    stream: bool = False
    chunking_strategy: Literal["auto"] | ServerVad | None = None


class TranslationForm(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/audio/translations`` besides ``file``."""

    model: Name
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0


class Usage(msgspec.Struct, kw_only=True):
    type: str = "duration"
    seconds: int


class TokenLogprobJSON(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionJSON(msgspec.Struct, kw_only=True, omit_defaults=True):
    text: str
    logprobs: list[TokenLogprobJSON] | None = None
    usage: Usage | None = None


class SegmentJSON(msgspec.Struct, kw_only=True):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class WordJSON(msgspec.Struct, kw_only=True):
    word: str
    start: float
    end: float


class VerboseJSON(msgspec.Struct, kw_only=True, omit_defaults=True):
    task: str
    language: str
    duration: float
    text: str
    segments: list[SegmentJSON] | None = None
    words: list[WordJSON] | None = None
    usage: Usage | None = None


class TranscriptTextDelta(
    msgspec.Struct, tag_field="type", tag="transcript.text.delta", omit_defaults=True
):
    delta: str
    logprobs: list[TokenLogprobJSON] | None = msgspec.field(default=None)


class TranscriptTextDone(
    msgspec.Struct, tag_field="type", tag="transcript.text.done", omit_defaults=True
):
    text: str
    usage: Usage
    logprobs: list[TokenLogprobJSON] | None = msgspec.field(default=None)


class ModelObject(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "voxserve"


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelObject]


class ModelId(msgspec.Struct, kw_only=True):
    id: str


class SpeechModelList(msgspec.Struct, kw_only=True):
    """``GET /v1/audio/models``: the speech models, as Open WebUI reads them (``models``:
    ``[{id}]``; without it, it offers its own ``tts-1`` and ``tts-1-hd``), and in OpenAI's
    list shape (``data``)."""

    models: list[ModelId]
    object: str = "list"
    data: list[ModelObject]


class VoiceRef(msgspec.Struct, forbid_unknown_fields=True):
    """The SDK's ``{"id": ...}`` spelling of a voice."""

    id: Name


class SpeechRequest(msgspec.Struct, kw_only=True):
    """The JSON body of ``POST /v1/audio/speech``."""

    model: Name
    input: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SPEECH_INPUT)]
    voice: Name | VoiceRef
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] = 1.0
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: Annotated[str, msgspec.Meta(max_length=MAX_SPEECH_INPUT)] | None = None
    """Accepted for compatibility; none of the backends can follow instructions."""

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


class SpeechAudioDelta(msgspec.Struct, tag_field="type", tag="speech.audio.delta"):
    audio: str
    """Base64 of the next bytes of the audio, in the requested format."""


class SpeechUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDone(msgspec.Struct, tag_field="type", tag="speech.audio.done"):
    usage: SpeechUsage


class VoiceInfo(msgspec.Struct, kw_only=True):
    id: str
    name: str
    backend: str
    speaker: str | int | None
    sample_rate: int
    """The rate of the audio responses carry (always 24 kHz), not the model's own."""


class VoiceName(msgspec.Struct, kw_only=True):
    """A voice as Open WebUI and AnythingLLM read it: the id to send, a name to show."""

    id: str
    name: str


class ModelVoices(msgspec.Struct, kw_only=True):
    model: str
    voices: list[VoiceInfo]


class VoiceList(msgspec.Struct, kw_only=True):
    """``GET /v1/audio/voices``: OpenAI has no such route; this is what clients read.

    ``voices`` is the flat list Open WebUI and AnythingLLM take (without it they fall
    back to six hard-coded names); ``data`` groups the voices by model, with details.
    """

    object: str = "list"
    voices: list[VoiceName]
    data: list[ModelVoices]


def sse_event(event: msgspec.Struct | dict[str, Any]) -> bytes:
    """One server-sent event carrying ``event`` as JSON, as OpenAI streams them."""
    return b"data: " + msgspec.json.encode(event) + b"\n\n"
