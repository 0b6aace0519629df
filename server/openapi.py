"""The OpenAPI operations of the API routes: bodies from the Structs they parse with, and
the statuses each route can answer.

The audio routes take the raw request and parse the body themselves (to hold uploads
to their limits and answer in OpenAI's error envelope), so Litestar sees no ``data``
parameter and would document no request body. Each route gets an ``operation_class``
whose schema carries the body and responses instead, built by ``msgspec.json.schema``
from the very Structs the handler decodes and encodes: the documentation cannot
drift from the parser.

Litestar's own guess at the errors is wrong for every route here (a 400 in its own
``{status_code, detail}`` shape for any route with a parameter; no 401, 404, 429 or
503 at all), so each operation below names its error statuses itself. That list is
the one record of what a route can answer: ``tests/api/test_api_docs.py`` provokes
every status over HTTP and fails on one documented but never answered, or answered
but not documented. A 500 is documented nowhere: no route answers it by design, and
an unexpected fault still gets OpenAI's envelope (see the document's description).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from server.encoding import CONTENT_TYPES
from server.errors import ErrorEnvelope
from server.protocol import (
    ModelList,
    ModelObject,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechModelList,
    SpeechRequest,
    TranscriptionForm,
    TranscriptionJSON,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranslationForm,
    VerboseJSON,
    VoiceList,
)

Schema = dict[str, Any]


def json_schema(type_: Any) -> Schema:
    """JSON Schema of a Struct (or a tagged union of them) with every ``$ref`` inlined.

    msgspec refers to nested Structs as ``#/$defs/...``; inside an OpenAPI document that
    would resolve against the document's root, so the definitions are spliced in (and a
    union's ``discriminator``, whose mapping names them, is left out).
    """
    top = msgspec.json.schema(type_)
    defs: dict[str, Schema] = top.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items() if key != "discriminator"}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: Schema = inline(top)
    return result


def form_schema(struct: type[msgspec.Struct], file_field: str = "file") -> Schema:
    """A multipart form: the Struct's fields, each a part, plus the uploaded file.

    A form field cannot be null (leaving it out, or sending it empty, is the null), so
    ``null`` alternatives are dropped; lists are repeated parts, named as the Struct
    names them (``include[]``); objects are ``name[key]`` parts, as the parser reads them.
    """
    schema = json_schema(struct)
    properties = {name: _form_field(prop) for name, prop in schema["properties"].items()}
    schema["properties"] = {
        file_field: {"type": "string", "format": "binary", "description": "The audio file."},
        **properties,
    }
    schema["required"] = [file_field, *schema.get("required", [])]
    return schema


_OBJECT_PARTS = "An object is sent as one `name[key]` part per key, as OpenAI's SDK sends it."


def _form_field(prop: Schema) -> Schema:
    """One form field's schema: never null; an object is sent as its ``name[key]`` parts."""
    if "anyOf" in prop:
        options = [option for option in prop["anyOf"] if option != {"type": "null"}]
        if len(options) < len(prop["anyOf"]):
            rest = {key: value for key, value in prop.items() if key not in ("anyOf", "default")}
            prop = {**rest, **options[0]} if len(options) == 1 else {**rest, "anyOf": options}
    if any(option.get("type") == "object" for option in prop.get("anyOf", [prop])):
        prop = {**prop, "description": _OBJECT_PARTS}
    return prop


_ENVELOPE = json_schema(ErrorEnvelope)
_ERROR_EVENT = {
    **_ENVELOPE,
    "properties": {"type": {"enum": ["error"]}, **_ENVELOPE["properties"]},
    "required": ["type", *_ENVELOPE["required"]],
}


def sse_schema(events: Any) -> Schema:
    """One server-sent event (Open API 3.1 describes each event, not the stream): its
    ``data`` is JSON, one of ``events`` or, once the status line is gone, an error."""
    data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [json_schema(events), _ERROR_EVENT]},
    }
    return {"type": "object", "properties": {"data": data}, "required": ["data"]}


ERRORS: dict[int, str] = {
    400: "Invalid request: a bad field or JSON body, audio that cannot be decoded, or a "
    "model of the other kind (a speech model sent to transcription, or the reverse).",
    401: "No valid API key, on a server that has keys.",
    404: "No model (or voice) answers to this name.",
    413: "The request body or the file is larger than the server accepts.",
    429: "Every place in the queues of the models this route uses is taken; retry after "
    "``Retry-After`` seconds.",
    503: "Not served now: the model is loading or failed to load, the request waited past "
    "``max_queue_time``, or the server is draining for shutdown.",
}
"""What each error status means, wherever it is documented."""

GUARDED = (401, 503)
"""What every route behind the API key can answer besides its own errors: 401 without
a valid key, and 503 while the server drains (the admission middleware refuses every
request that is not to a public path)."""
UPLOAD = (400, 404, 413, 429, *GUARDED)
"""The audio routes: a body to parse and a model's queue to wait in."""
DRAINING = "The server is draining for shutdown; retry on another replica."

_ERROR_CONTENT = {"application/json": {"schema": _ENVELOPE}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}


def responses(
    success: dict[str, Schema],
    description: str,
    errors: Iterable[int],
    notes: Mapping[int, str] | None = None,
) -> Schema:
    """200 with these content types, and each of ``errors`` with OpenAI's envelope.

    ``notes`` says what a status means on this route where :data:`ERRORS` says more
    than the route can do (a 503 that only the drain gives).
    """
    result: Schema = {
        "200": {
            "description": description,
            "content": {media: {"schema": schema} for media, schema in success.items()},
        }
    }
    for status in sorted(errors):
        text = (notes or {}).get(status, ERRORS[status])
        result[str(status)] = {"description": text, "content": _ERROR_CONTENT}
        if status in (429, 503):
            result[str(status)]["headers"] = _RETRY_AFTER
    return result


def documented(responses: Schema, body: Schema | None = None) -> type[Operation]:
    """An ``operation_class`` whose schema has these responses (and this request body)."""
    extra: Schema = {"responses": responses}
    if body is not None:
        extra["requestBody"] = body

    class DocumentedOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            return {**super().to_schema(), **extra}

    return DocumentedOperation


def _multipart(struct: type[msgspec.Struct]) -> Schema:
    return {"required": True, "content": {"multipart/form-data": {"schema": form_schema(struct)}}}


_TRANSCRIPT: dict[str, Schema] = {
    "application/json": {"anyOf": [json_schema(TranscriptionJSON), json_schema(VerboseJSON)]},
    "text/plain": {"type": "string"},  # text, srt and vtt
}

TRANSCRIPTION = documented(
    responses(
        {**_TRANSCRIPT, "text/event-stream": sse_schema(TranscriptTextDelta | TranscriptTextDone)},
        "The transcript in ``response_format``; with ``stream=true``, server-sent events.",
        UPLOAD,
    ),
    _multipart(TranscriptionForm),
)
TRANSLATION = documented(
    responses(_TRANSCRIPT, "The English translation in ``response_format``.", UPLOAD),
    _multipart(TranslationForm),
)
SPEECH = documented(
    responses(
        {
            **{media: {"type": "string", "format": "binary"} for media in CONTENT_TYPES.values()},
            "text/event-stream": sse_schema(SpeechAudioDelta | SpeechAudioDone),
        },
        "Audio in ``response_format``, streamed; with ``stream_format=sse``, server-sent events.",
        UPLOAD,
    ),
    {"required": True, "content": {"application/json": {"schema": json_schema(SpeechRequest)}}},
)
VOICES = documented(
    responses(
        {"application/json": json_schema(VoiceList)},
        "The voices of every speech model, or of the one ``model`` names.",
        (400, 404, *GUARDED),
        {400: "``model`` names a transcription model.", 503: DRAINING},
    )
)
MODELS = documented(
    responses(
        {"application/json": json_schema(ModelList)},
        "Every name a model answers to here, aliases included.",
        GUARDED,
        {503: DRAINING},
    )
)
SPEECH_MODELS = documented(
    responses(
        {"application/json": json_schema(SpeechModelList)},
        "Every name a speech model answers to here, aliases included.",
        GUARDED,
        {503: DRAINING},
    )
)
MODEL = documented(
    responses(
        {"application/json": json_schema(ModelObject)},
        "The model of this name.",
        (404, *GUARDED),
        {503: DRAINING},
    )
)
_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
HEALTH = documented(responses({"application/json": _STATUS}, "The process is up.", ()))
READY = documented(
    responses(
        {"application/json": _STATUS},
        "Every model is loaded and the server is not draining.",
        (503,),
        {503: "A model is loading or failed to load, or the server is draining."},
    )
)
METRICS = documented(
    responses({"text/plain": {"type": "string"}}, "Prometheus text exposition.", ())
)
