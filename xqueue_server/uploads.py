"""Reading the submit form (urlencoded or multipart) with per-file and per-request limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from .config import Settings


class UploadError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class SubmitForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # field name (= file name) -> content


async def read_submit_form(request: web.Request, settings: Settings) -> SubmitForm:
    if request.content_length is not None and request.content_length > settings.max_request_bytes:
        raise UploadError(f"Request is larger than {settings.max_request_bytes} bytes")
    if request.content_type != "multipart/form-data":
        try:
            data = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise UploadError(f"Request is larger than {settings.max_request_bytes} bytes") from None
        except (ValueError, UnicodeDecodeError, HttpProcessingError) as exc:
            raise UploadError(f"Queue request has invalid format: {exc}") from None
        form = SubmitForm()
        for name in ("xqueue_header", "xqueue_body"):
            value = data.get(name)
            if isinstance(value, str):
                form.fields[name] = value
        return form
    return await _read_multipart(request, settings)


async def _read_multipart(request: web.Request, settings: Settings) -> SubmitForm:
    form = SubmitForm()
    total = 0
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or not part.name:
                raise UploadError("Queue request has invalid format: unexpected multipart part")
            is_file = part.filename is not None
            cap = settings.max_file_bytes if is_file else settings.max_body_bytes + settings.max_header_bytes
            data = bytearray()
            while True:
                chunk = await part.read_chunk(65536)
                if not chunk:
                    break
                data.extend(chunk)
                total += len(chunk)
                if total > settings.max_request_bytes:
                    raise UploadError(f"Request is larger than {settings.max_request_bytes} bytes")
                if len(data) > cap:
                    if is_file:
                        raise UploadError(f"File '{part.name}' is larger than {settings.max_file_bytes} bytes")
                    raise UploadError(f"Field '{part.name}' is too large")
            if is_file:
                if part.name in form.files:
                    continue  # like Django, the first part of a name wins
                if len(form.files) >= settings.max_files:
                    raise UploadError(f"At most {settings.max_files} files per submission")
                form.files[part.name] = bytes(data)
            elif part.name in ("xqueue_header", "xqueue_body") and part.name not in form.fields:
                try:
                    form.fields[part.name] = data.decode(part.get_charset(default="utf-8"))
                except (UnicodeDecodeError, LookupError):
                    raise UploadError("Queue request has invalid format: field is not valid text") from None
    except UploadError:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        raise UploadError(f"Queue request has invalid format: malformed multipart body ({exc})") from None
    return form
