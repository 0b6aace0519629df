"""Request bodies (multipart forms, JSON) into typed Structs, with 400s that name the field.

The official SDK sends list fields as repeated ``name[]`` parts and objects as
``name[key]`` parts; both are folded back into one value before validation.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar.datastructures import FormMultiDict, UploadFile

from server.errors import InvalidRequest

StructT = TypeVar("StructT", bound=msgspec.Struct)

_OBJECT_PART = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<key>[^\[\]]+)\]$")
_ERROR_PATH = re.compile(r"at `\$\.(?P<param>[^`\[]+)")
_ERROR_FIELD = re.compile(r"field `(?P<param>[^`]+)`")


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
            fields.setdefault(match["name"], {})[match["key"]] = value
        elif value != "":  # an empty text field means "not given", as curl users expect
            fields[name] = value
    if upload is None:
        raise InvalidRequest(
            f"You must provide a '{file_field}' (the audio to process).", param=file_field
        )
    try:
        return upload, msgspec.convert(fields, schema, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {exc}", param=_param_of(str(exc))) from exc


def decode_json(body: bytes, schema: type[StructT]) -> StructT:
    """A JSON body validated as ``schema``; malformed JSON or invalid UTF-8 is a 400."""
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {exc}", param=_param_of(str(exc))) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # msgspec's answer to JSON nested absurdly deep
        raise InvalidRequest("The request body is nested too deeply.") from None


def _param_of(message: str) -> str | None:
    for pattern in (_ERROR_PATH, _ERROR_FIELD):
        if match := pattern.search(message):
            return match["param"]
    return None
