"""Reading request bodies: forms (urlencoded or multipart, with files) and JSON objects.

The one place where body bytes become text. Bodies are read with limits while they stream in, text
is decoded strictly in an allow-listed charset (``validation.text_codec``), duplicate fields are
refused instead of silently picking one, and file names are checked before anything is stored. So
handlers only ever see text PostgreSQL can hold. Problems raise ``FormError`` with a client message.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

from .config import Settings
from .validation import InputError, check_file_name, decode_text, parse_json_object, text_codec

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM_FIELDS = 1000  # Django's DATA_UPLOAD_MAX_NUMBER_FIELDS
CHUNK = 65536
# RFC 2231 extended parameters (name*=charset''value, name*0*=...): aiohttp decodes them with whatever
# codec the charset names, so the charset is checked against our allow-list first.
EXTENDED_PARAM_CHARSET = re.compile(r"""\*\s*=\s*"?([^'";]*)'""")
# What aiohttp raises while a body streams in when its framing or content encoding is broken.
BROKEN_BODY = (HttpProcessingError, RequestPayloadError)


class FormError(ValueError):
    """A body we refuse. ``limit`` marks size limits (as opposed to malformed input)."""

    def __init__(self, message: str, *, limit: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


@dataclass(frozen=True)
class FormLimits:
    max_total: int  # the whole body
    max_field: int  # one text field
    files_allowed: bool = False  # False: file parts are read (within max_total) and dropped
    max_file: int = 0
    max_files: int = 0
    max_parts: int = MAX_FORM_FIELDS  # multipart parts of any kind (each costs header parsing)


@dataclass
class SubmitForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # field name (= file name) -> content


def submit_limits(settings: Settings) -> FormLimits:
    return FormLimits(
        max_total=settings.max_request_bytes,
        max_field=settings.max_body_bytes + settings.max_header_bytes,
        files_allowed=True,
        max_file=settings.max_file_bytes,
        max_files=settings.max_files,
        # The LMS sends the header, the body and the files; a little slack for extra fields.
        max_parts=settings.max_files + 10,
    )


def small_form_limits(settings: Settings) -> FormLimits:
    """login and put_result: text fields only, as large as a request may be."""
    return FormLimits(max_total=settings.max_request_bytes, max_field=settings.max_request_bytes)


async def read_submit_form(request: web.Request, settings: Settings,
                           on_field: Callable[[str, str], Awaitable[None]] | None = None) -> SubmitForm:
    return await read_form(request, ("xqueue_header", "xqueue_body"), submit_limits(settings), on_field)


async def read_form(request: web.Request, names: Collection[str], limits: FormLimits,
                    on_field: Callable[[str, str], Awaitable[None]] | None = None) -> SubmitForm:
    """The named text fields (and files, when allowed) of an urlencoded or multipart body.

    ``on_field(name, text)`` sees each named multipart field as soon as it is complete, before the
    parts after it are read, and may raise to stop reading (submit checks the queue right there)."""
    too_large = FormError(f"Request is larger than {limits.max_total} bytes", limit=True)
    if request.content_length is not None and request.content_length > limits.max_total:
        raise too_large
    content_type = request.content_type
    if content_type not in ("", *FORM_TYPES):
        raise FormError("Content-Type must be application/x-www-form-urlencoded or multipart/form-data")
    try:
        if content_type == "multipart/form-data":
            return await _read_multipart(request, names, limits, on_field)
        return await _read_urlencoded(request, names, limits)
    except FormError:
        raise
    except InputError as exc:
        raise FormError(exc.message) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except (ValueError, AssertionError, RuntimeError, LookupError, *BROKEN_BODY):
        # aiohttp's multipart reader reports malformed framing with these; the details only echo input.
        raise FormError("malformed request body") from None


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refusing more than ``max_bytes`` also when no Content-Length was sent."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise FormError(f"Request is larger than {max_bytes} bytes", limit=True)
    data = bytearray()
    try:
        while chunk := await request.content.read(CHUNK):
            data.extend(chunk)
            if len(data) > max_bytes:
                raise FormError(f"Request is larger than {max_bytes} bytes", limit=True)
    except BROKEN_BODY:
        raise FormError("malformed request body") from None
    return bytes(data)


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """A JSON object body: strict charset, strict JSON (see ``validation.parse_json``)."""
    raw = await read_body(request, max_bytes)
    try:
        text = decode_text(raw, text_codec(request.charset), "body")
        return parse_json_object(text, "body")
    except InputError as exc:
        raise FormError(exc.message) from None


async def _read_urlencoded(request: web.Request, names: Collection[str], limits: FormLimits) -> SubmitForm:
    codec = text_codec(request.charset)
    raw = await read_body(request, limits.max_total)
    text = decode_text(raw, codec, "form body").rstrip()
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding=codec, errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise FormError(f"a percent-encoded form value is not valid {codec} text") from None
    except ValueError:
        raise FormError(f"more than {MAX_FORM_FIELDS} form fields") from None
    form = SubmitForm()
    for name, value in pairs:
        if name in names:
            _add_field(form, name, value, limits)
    return form


def _add_field(form: SubmitForm, name: str, value: str, limits: FormLimits) -> None:
    if name in form.fields:
        # Ambiguous: Django would take the last value, aiohttp the first. Refuse instead of guessing.
        raise FormError(f"field '{name}' is given more than once")
    if len(value) > limits.max_field:
        raise FormError(f"Field '{name}' is too large", limit=True)
    form.fields[name] = value


async def _read_multipart(request: web.Request, names: Collection[str], limits: FormLimits,
                          on_field: Callable[[str, str], Awaitable[None]] | None = None) -> SubmitForm:
    form = SubmitForm()
    total = 0
    reader = await request.multipart()
    parts = 0
    while True:
        part = await reader.next()
        if part is None:
            return form
        parts += 1
        if parts > limits.max_parts:
            raise FormError(f"more than {limits.max_parts} form parts", limit=True)
        for charset in EXTENDED_PARAM_CHARSET.findall(part.headers.get("Content-Disposition", "")):
            text_codec(charset)
        if not isinstance(part, BodyPartReader) or not part.name:
            raise FormError("unexpected multipart part (nested, or without a name)")
        is_file = part.filename is not None
        if is_file and limits.files_allowed:
            # Checked before the content is read: a name that cannot be stored must never reach storage.
            try:
                check_file_name(part.name)
            except InputError as exc:
                raise FormError(exc.message) from None
            if part.name in form.files:
                raise FormError(f"file '{part.name}' is given more than once")
            if len(form.files) >= limits.max_files:
                raise FormError(f"At most {limits.max_files} files per submission", limit=True)
        wanted = (is_file and limits.files_allowed) or (not is_file and part.name in names)
        cap = limits.max_file if is_file else limits.max_field
        data = bytearray()
        while chunk := await part.read_chunk(CHUNK):
            total += len(chunk)
            if total > limits.max_total:
                raise FormError(f"Request is larger than {limits.max_total} bytes", limit=True)
            if not wanted:
                continue
            data.extend(chunk)
            if len(data) > cap:
                if is_file:
                    raise FormError(f"File '{part.name}' is larger than {limits.max_file} bytes", limit=True)
                raise FormError(f"Field '{part.name}' is too large", limit=True)
        if not wanted:
            continue
        if is_file:
            form.files[part.name] = bytes(data)
        else:
            codec = text_codec(part.get_charset(default="utf-8"))
            _add_field(form, part.name, decode_text(bytes(data), codec, f"field '{part.name}'"), limits)
            if on_field is not None:
                await on_field(part.name, form.fields[part.name])
