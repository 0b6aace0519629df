"""Request bodies (multipart forms, JSON) into typed Structs, with 400s that name the field.

The official SDK sends list fields as repeated ``name[]`` parts and objects as
``name[key]`` parts; both are folded back into one value before validation.

Whatever a client sends, the answer is a 400 (or 413) that says what is wrong, not a
500: text fields that are not UTF-8, too many parts, a field sent both as a value and
as an object. Messages quote what was sent only in part, so a 300 kB field is not
echoed back whole.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.exceptions import ClientException
from multipart import ParserLimitReached, PushMultipartParser  # type: ignore[import-untyped]

from server.errors import InvalidRequest, PayloadTooLarge

StructT = TypeVar("StructT", bound=msgspec.Struct)

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


def parse_form(
    form: FormMultiDict, schema: type[StructT], *, file_field: str = "file"
) -> tuple[UploadFile, StructT]:
    """The uploaded file and the other fields validated as ``schema``."""
    fields: dict[str, Any] = {}
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if name == file_field:
            if not isinstance(value, UploadFile):
                raise InvalidRequest(
                    f"'{file_field}' must be sent as a file upload, not a text field.",
                    param=file_field,
                )
            upload = value
        elif isinstance(value, UploadFile):
            raise InvalidRequest(f"Unexpected file upload in field '{name}'.", param=name)
        elif name.endswith("[]"):
            fields.setdefault(name, []).append(value)
        elif match := _OBJECT_PART.match(name):
            parts = fields.setdefault(match["name"], {})
            if not isinstance(parts, dict):
                raise _both_ways(match["name"])
            parts[match["key"]] = value
        elif isinstance(fields.get(name), dict):
            raise _both_ways(name)
        elif value != "":  # an empty text field means "not given", as curl users expect
            fields[name] = value
    if upload is None:
        raise InvalidRequest(
            f"You must provide a '{file_field}' (the audio to process).", param=file_field
        )
    try:
        return upload, msgspec.convert(fields, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc


def _both_ways(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"The field '{name}' is sent both as a value and as an object ('{name}[key]').",
        param=name,
    )


def decode_json(body: bytes, schema: type[StructT]) -> StructT:
    """A JSON body validated as ``schema``; malformed JSON or invalid UTF-8 is a 400."""
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # msgspec's answer to JSON nested absurdly deep
        raise InvalidRequest("The request body is nested too deeply.") from None


def _invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    message = str(exc)
    param = _param_of(message)
    if param and len(param) > MAX_PARAM_CHARS:
        param = param[: MAX_PARAM_CHARS - 1] + "\u2026"
    return InvalidRequest(f"Invalid request: {_clip(message)}", param=param)


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
