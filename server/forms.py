"""Request bodies (multipart forms, JSON) into typed Structs, with 400s that name the field.

The official SDK sends list fields as repeated ``name[]`` parts and objects as
``name[key]`` parts; both are folded back into one value before validation. curl
users often leave out the brackets (``-F timestamp_granularities=word``), so a list
field is also read under its bare name, once or repeated. A value is never split
(``word,segment`` is one value, and not a granularity): nothing is guessed.

Fields the server does not know are ignored by default (``unknown_fields="ignore"``):
clients send them without asking, and a 400 for each broke every call of theirs: a
newer SDK's fields (``keywords``), another server's (``vad_filter``, which
wyoming-openai sends for speaches), a proxy's extras (LiteLLM). They are named in the
``X-Voxserve-Ignored-Fields`` response header and the debug log, so that a misspelt
option is still found. With ``unknown_fields="refuse"`` each is a 400 naming it. Only
the top level is lenient: inside a known object (``chunking_strategy[...]``, a voice's
``{"id": ...}``) an unknown key is a 400, since the keys say which kind of object it is.
A known field with a bad value is always a 400 naming the field.

Whatever a client sends, the answer is a 400 (or 413) that says what is wrong, not a
500: text fields that are not UTF-8, too many parts, a field sent both as a value and
as an object. Messages quote what was sent only in part, so a 300 kB field is not
echoed back whole.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict, MutableScopeHeaders, UploadFile
from litestar.exceptions import ClientException
from litestar.types import Message, Scope
from multipart import ParserLimitReached, PushMultipartParser  # type: ignore[import-untyped]

from server.errors import InvalidRequest, PayloadTooLarge
from server.runtime import runtime

logger = logging.getLogger("voxserve.forms")

StructT = TypeVar("StructT", bound=msgspec.Struct)
UnknownFields = Literal["ignore", "refuse"]
"""What becomes of a field the request Struct does not have (the ``unknown_fields`` setting)."""
IGNORED_FIELDS_HEADER = "X-Voxserve-Ignored-Fields"
"""The response header naming the ignored fields, comma-separated, percent-encoded."""
MAX_IGNORED_HEADER_CHARS = 512
"""The header's value is cut (ending ``, ...``) past this: a reverse proxy refuses a
response whose headers outgrow its buffer (nginx: 4 or 8 kB), and a client may send
a thousand made-up fields."""
_IGNORED = "voxserve.ignored_fields"
"""Where the ignored names wait in the request's scope state for the response start."""

_OBJECT_PART = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<key>[^\[\]]+)\]$")
_ERROR_PATH = re.compile(r"at `\$\.(?P<param>[^`\[]+)")
_ERROR_FIELD = re.compile(r"field `(?P<param>[^`]+)`")
MAX_MESSAGE_CHARS = 400
"""Validation messages quote the value they refuse; longer ones keep their two ends."""
MAX_PARAM_CHARS = 100
"""An unknown field's name is the param; a name longer than this is cut."""
_TOO_MANY_PARTS = "Request Entity Too Large"
"""Litestar's detail, with status 400, for any multipart parser limit: too many parts
(``multipart_form_part_limit``), or one part header too long or with too many lines."""
_PARSER = PushMultipartParser(b"-")
_MAX_HEADER_BYTES: int = int(_PARSER.max_header_size)
"""The parser's longest part header line and most header lines per part, at the
defaults Litestar leaves them (4224 bytes, 8 lines)."""
_MAX_HEADER_COUNT: int = int(_PARSER.max_header_count)


async def read_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The request's form, with what Litestar refuses oddly made a clear 4xx.

    Litestar decodes every part without a filename as UTF-8 text and lets the
    ``UnicodeDecodeError`` out (a 500); it answers too many parts, and a part
    header too long (a 10,000-character filename), with one 400 that says
    "Request Entity Too Large". These become 413s that say which limit it was.
    """
    try:
        return await request.form()
    except UnicodeDecodeError:
        raise InvalidRequest(
            "A text field of the form is not valid UTF-8. Send text fields as UTF-8, "
            "and the audio as a file upload (with a filename)."
        ) from None
    except ClientException as exc:
        if exc.status_code != 400 or exc.detail != _TOO_MANY_PARTS:
            raise  # a body over the size limit is the same words with a 413: keep it
        raise _limit_reached(exc, request.app.multipart_form_part_limit) from None


def _limit_reached(exc: ClientException, part_limit: int) -> PayloadTooLarge:
    """Say which of the multipart parser's limits the form went over.

    Litestar answers every ``ParserLimitReached`` with the same words; the parser's
    own message survives as the exception's context (``raise ... from None`` hides
    it from tracebacks but keeps it).
    """
    reason = str(exc.__context__) if isinstance(exc.__context__, ParserLimitReached) else ""
    if "header length" in reason:
        return PayloadTooLarge(
            "A part header of the form (its Content-Disposition with the field name and "
            f"filename, or another header line) is longer than the {_MAX_HEADER_BYTES} "
            "bytes this server accepts; send a shorter filename."
        )
    if "header count" in reason:
        return PayloadTooLarge(
            f"A part of the form has more than {_MAX_HEADER_COUNT} header lines."
        )
    if "segment size" in reason:
        return PayloadTooLarge("A part of the form is larger than this server accepts.")
    return PayloadTooLarge(
        f"The form has too many parts; this server accepts at most {part_limit}."
    )


@dataclass(frozen=True)
class ParsedForm(Generic[StructT]):
    """A multipart form: its file, its known fields, and the names of those ignored."""

    upload: UploadFile
    fields: StructT
    ignored: tuple[str, ...]
    """Part names as sent (``vad_filter``, ``known_speaker_names[]``), each once."""


@dataclass(frozen=True)
class ParsedJSON(Generic[StructT]):
    """A JSON body: its known fields, and the top-level keys ignored."""

    fields: StructT
    ignored: tuple[str, ...]


async def read_fields(
    request: Request[Any, Any, Any], schema: type[StructT], *, file_field: str = "file"
) -> tuple[UploadFile, StructT]:
    """The request's form under the server's ``unknown_fields`` policy; the ignored
    names go to the response header and the debug log."""
    parsed = parse_form(
        await read_form(request), schema, unknown=_policy(request), file_field=file_field
    )
    _note_ignored(request, parsed.ignored)
    return parsed.upload, parsed.fields


async def read_json(request: Request[Any, Any, Any], schema: type[StructT]) -> StructT:
    """The request's JSON body, as :func:`read_fields` reads a form."""
    parsed = decode_json(await request.body(), schema, unknown=_policy(request))
    _note_ignored(request, parsed.ignored)
    return parsed.fields


def parse_form(
    form: FormMultiDict,
    schema: type[StructT],
    *,
    unknown: UnknownFields = "ignore",
    file_field: str = "file",
) -> ParsedForm[StructT]:
    """The uploaded file and the other fields validated as ``schema``."""
    known = _wire_names(schema)
    fields: dict[str, Any] = {}
    ignored: dict[str, None] = {}  # a dict keeps the order; a name sent twice is named once
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if name == file_field:
            if not isinstance(value, UploadFile):
                raise InvalidRequest(
                    f"'{file_field}' must be sent as a file upload, not a text field.",
                    param=file_field,
                )
            upload = value
            continue
        match = _OBJECT_PART.match(name)
        key = match["name"] if match else _as_list(name, known)
        if key not in known:
            if unknown == "refuse":
                raise _unknown_field(key)
            ignored[name] = None
        elif isinstance(value, UploadFile):
            raise InvalidRequest(f"Unexpected file upload in field '{name}'.", param=name)
        elif key.endswith("[]"):
            if value != "" or name == key:  # the bare spelling follows the rule for text
                fields.setdefault(key, []).append(value)
        elif match:
            parts = fields.setdefault(key, {})
            if not isinstance(parts, dict):
                raise _both_ways(key)
            parts[match["key"]] = value
        elif isinstance(fields.get(key), dict):
            raise _both_ways(key)
        elif value != "":  # an empty text field means "not given", as curl users expect
            fields[key] = value
    if upload is None:
        raise InvalidRequest(
            f"You must provide a '{file_field}' (the audio to process).", param=file_field
        )
    try:
        return ParsedForm(upload, msgspec.convert(fields, schema, strict=False), tuple(ignored))
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc


@cache
def _wire_names(schema: type[msgspec.Struct]) -> frozenset[str]:
    """The field names ``schema`` reads, as sent (``timestamp_granularities[]``)."""
    return frozenset(field.encode_name for field in msgspec.structs.fields(schema))


def _as_list(name: str, known: frozenset[str]) -> str:
    """``name``, or the list field it is the bare spelling of (``include`` -> ``include[]``)."""
    listed = f"{name}[]"
    return listed if listed in known else name


def _unknown_field(name: str) -> InvalidRequest:
    name = _clip_name(name)
    return InvalidRequest(
        f"Unknown field '{name}'. This server is set to refuse fields it does not know "
        '(unknown_fields = "refuse").',
        param=name,
    )


def _both_ways(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"The field '{name}' is sent both as a value and as an object ('{name}[key]').",
        param=name,
    )


def decode_json(
    body: bytes, schema: type[StructT], *, unknown: UnknownFields = "ignore"
) -> ParsedJSON[StructT]:
    """A JSON body validated as ``schema``; malformed JSON or invalid UTF-8 is a 400.

    ``schema`` skips the keys it does not have; they are listed by a second, cheap read
    of the top level (values skipped, not built). Under ``refuse``, an unknown key is
    named even when the body has other faults too: a misspelt ``voise`` is better
    reported as itself than as a missing ``voice``.
    """
    known = _wire_names(schema)
    try:
        fields = msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        misspelt = _unknown_keys(body, known) if unknown == "refuse" else ()
        raise (_unknown_field(misspelt[0]) if misspelt else _invalid(exc)) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # msgspec's answer to JSON nested absurdly deep
        raise InvalidRequest("The request body is nested too deeply.") from None
    ignored = _unknown_keys(body, known)
    if ignored and unknown == "refuse":
        raise _unknown_field(ignored[0])
    return ParsedJSON(fields, ignored)


def _unknown_keys(body: bytes, known: frozenset[str]) -> tuple[str, ...]:
    """The top-level keys of ``body`` not in ``known``; none if it has no readable top level."""
    try:
        keys = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return ()
    return tuple(key for key in keys if key not in known)


def _invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    message = str(exc)
    param = _param_of(message)
    return InvalidRequest(f"Invalid request: {_clip(message)}", param=param and _clip_name(param))


def _clip_name(name: str) -> str:
    return name if len(name) <= MAX_PARAM_CHARS else name[: MAX_PARAM_CHARS - 1] + "\u2026"


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, or its head and tail (the path of the field) around an ellipsis."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[: limit - tail - 1]}\u2026{text[-tail:]}"


def _param_of(message: str) -> str | None:
    for pattern in (_ERROR_PATH, _ERROR_FIELD):
        if match := pattern.search(message):
            return match["param"]
    return None


def _policy(request: Request[Any, Any, Any]) -> UnknownFields:
    return runtime(request).settings.unknown_fields


def _note_ignored(request: Request[Any, Any, Any], names: tuple[str, ...]) -> None:
    """Keep the ignored names for :func:`report_ignored_fields`, and log them (debug)."""
    if not names:
        return
    request.scope["state"][_IGNORED] = names
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("ignored unknown fields: %s", ignored_fields_value(names))


def ignored_fields_value(names: tuple[str, ...]) -> str:
    """The header's value: each name percent-encoded (a name may hold a comma, a line
    break or any character), in alphabetical order (the form parser keeps none), comma-
    separated, cut at :data:`MAX_IGNORED_HEADER_CHARS`."""
    value = ""
    for name in sorted(names):
        item = quote(name, safe="[]")
        joined = f"{value}, {item}" if value else item
        if len(joined) > MAX_IGNORED_HEADER_CHARS:
            return f"{value}, ..." if value else "..."
        value = joined
    return value


async def report_ignored_fields(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: the response (an error too) names what was ignored."""
    if message["type"] != "http.response.start":
        return
    names: tuple[str, ...] | None = scope.get("state", {}).get(_IGNORED)
    if names:
        headers = MutableScopeHeaders.from_message(message)
        headers.add(IGNORED_FIELDS_HEADER, ignored_fields_value(names))
