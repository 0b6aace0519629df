"""The OpenAPI operations of the audio routes, generated from the Structs they parse with.

Those routes take the raw request and parse the body themselves (to hold uploads to
their limits and answer in OpenAI's error envelope), so Litestar sees no ``data``
parameter and would document no request body. Each gets an ``operation_class``
whose schema carries the body and responses instead, built by ``msgspec.json.schema``
from the very Structs the handler decodes and encodes: the documentation cannot
drift from the parser.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from server.encoding import CONTENT_TYPES
from server.errors import ErrorEnvelope
from server.protocol import (
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    TranscriptionForm,
    TranscriptionJSON,
    TranscriptTextDelta,
    TranscriptTextDone,
    TranslationForm,
    VerboseJSON,
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


_ERRORS: dict[str, str] = {
    "400": "Invalid request: a bad field, a bad JSON body, or audio that cannot be decoded.",
    "401": "Missing or unknown API key.",
    "404": "The model (or voice) does not exist.",
    "413": "The request body or the file is larger than the server accepts.",
    "429": "The model's queue is full; retry after ``Retry-After`` seconds.",
    "500": "The server failed on this request.",
    "503": "The request waited too long in the queue, or the server is not ready.",
}
_ERROR_CONTENT = {"application/json": {"schema": _ENVELOPE}}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}


def responses(success: dict[str, Schema], description: str) -> Schema:
    """200 with these content types, and every error status with OpenAI's envelope."""
    result: Schema = {
        "200": {
            "description": description,
            "content": {media: {"schema": schema} for media, schema in success.items()},
        }
    }
    for status, text in _ERRORS.items():
        result[status] = {"description": text, "content": _ERROR_CONTENT}
        if status in ("429", "503"):
            result[status]["headers"] = _RETRY_AFTER
    return result


def documented(body: Schema, responses: Schema) -> type[Operation]:
    """An ``operation_class`` whose schema has this request body and these responses."""

    class DocumentedOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            return {**super().to_schema(), "requestBody": body, "responses": responses}

    return DocumentedOperation


def _multipart(struct: type[msgspec.Struct]) -> Schema:
    return {"required": True, "content": {"multipart/form-data": {"schema": form_schema(struct)}}}


_TRANSCRIPT: dict[str, Schema] = {
    "application/json": {"anyOf": [json_schema(TranscriptionJSON), json_schema(VerboseJSON)]},
    "text/plain": {"type": "string"},  # text, srt and vtt
}

TRANSCRIPTION = documented(
    _multipart(TranscriptionForm),
    responses(
        {**_TRANSCRIPT, "text/event-stream": sse_schema(TranscriptTextDelta | TranscriptTextDone)},
        "The transcript in ``response_format``; with ``stream=true``, server-sent events.",
    ),
)
TRANSLATION = documented(
    _multipart(TranslationForm),
    responses(_TRANSCRIPT, "The English translation in ``response_format``."),
)
SPEECH = documented(
    {"required": True, "content": {"application/json": {"schema": json_schema(SpeechRequest)}}},
    responses(
        {
            **{media: {"type": "string", "format": "binary"} for media in CONTENT_TYPES.values()},
            "text/event-stream": sse_schema(SpeechAudioDelta | SpeechAudioDone),
        },
        "Audio in ``response_format``, streamed; with ``stream_format=sse``, server-sent events.",
    ),
)
