"""Request bodies and parameters, as both APIs read them, within bounds: no body may
stall the process, and nothing a client sends escapes as a 5xx.

`json_body` counts a JSON body's values before parsing it (one comma per value bounds
them from above, and counting bytes is cheap) and refuses more than ``max_json_values``
with 413: parsing millions of numbers holds the GIL for seconds, stalling every thread of
the process. Nesting too deep for the parser is a 400. `multipart_form` reads a
multipart/form-data body's fields and files. `int_param` takes an integer parameter from a
form, a query string or JSON, and names the parameter in every error.
"""

import json
import re
from collections.abc import Mapping
from typing import Any

import multipart
from flask import abort, request

DIGITS = re.compile(r"[0-9]{1,18}")
SHOWN = 40  # characters of a bad value quoted back


def json_body(max_values: int) -> Any:
    """The request's JSON document."""
    return json_document(request.get_data(), max_values)


def json_document(data: bytes, max_values: int) -> Any:
    """``data`` parsed as JSON, within ``max_values``."""
    values = data.count(b",") + 1
    if values > max_values:
        abort(413, f"JSON body holds up to {values} values; the limit is {max_values}")
    try:
        return json.loads(data)
    except RecursionError:
        abort(400, "JSON body is nested too deeply")
    except ValueError as exc:  # UnicodeDecodeError included
        abort(400, f"JSON body is not valid JSON: {str(exc)[:200]}")


def multipart_form(max_parts: int) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart/form-data body's text fields and its files (the parts with a filename),
    by name, the first part of each name; 400 for a malformed body, 413 for one of more than
    ``max_parts`` parts or an overlong header. The body is read whole, within the app's
    MAX_CONTENT_LENGTH."""
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        abort(400, "multipart body has no boundary in its Content-Type")
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=max_parts) as parser:
            for event in parser.parse(request.get_data(cache=False)):
                if isinstance(event, multipart.MultipartSegment):
                    part, content = event, bytearray()
                elif event is not None:
                    content += event
                elif part.filename is not None:
                    files.setdefault(part.name, bytes(content))
                else:
                    fields.setdefault(part.name, content.decode("utf-8", "replace"))
    except multipart.ParserLimitReached as exc:
        abort(413, f"multipart body is over a limit: {exc}")
    except multipart.MultipartError as exc:
        abort(400, f"multipart body is malformed: {exc}")
    return fields, files


def int_param(params: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """``params[name]`` as an int from ``low`` to ``high``, or None when absent."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and DIGITS.fullmatch(value.strip()):
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        abort(400, f"{name} must be a whole number from {low} to {high}, not {shown(value)}")
    if not low <= value <= high:
        abort(400, f"{name} must be from {low} to {high}, not {shown(value)}")
    return value


def shown(value: object) -> str:
    text = repr(value) if not isinstance(value, int) else str(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."
