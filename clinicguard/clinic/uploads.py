"""Safe intake of patients' files (before/after photos, documents).

- **One part, in memory.** The multipart body is parsed here, bounded, with exactly one
  part named ``file``; nothing is spooled to a temporary file on disk (a photo of a patient
  is personal data from the first byte).
- **Type by content.** The type is decided by the magic bytes — JPEG, PNG, WebP or PDF —
  never by the client's ``Content-Type`` or the file name; anything else is a 415.
- **Images are re-encoded** with Pillow, in their own format, without EXIF, GPS, XMP, ICC
  or text chunks, after applying the EXIF orientation; the decoder's pixel limit refuses
  decompression bombs. Whatever else the file carried (an appended archive, a script, a
  second format: a polyglot) does not survive re-encoding.
- **PDFs** must be well-formed at both ends and carry no active content (JavaScript, launch
  actions, embedded files, rich media, XFA forms, automatic actions); a PDF with HTML or
  script markup, or any other polyglot, is refused as an attack signal.
- **Names** are normalized: NFC, no directories, no control characters, letters, digits,
  spaces, dots, dashes and underscores only, one extension that must agree with the
  detected type; a double extension (``laudo.pdf.exe``) is refused.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from clinicguard.core.errors import (
    FieldError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

JPEG, PNG, WEBP, PDF = "image/jpeg", "image/png", "image/webp", "application/pdf"
EXTENSIONS = {JPEG: ("jpg", "jpeg"), PNG: ("png",), WEBP: ("webp",), PDF: ("pdf",)}
PILLOW_FORMATS = {JPEG: "JPEG", PNG: "PNG", WEBP: "WEBP"}
MAX_PIXELS = 40_000_000
MAX_NAME = 100
#: PDF names that make a document act (run code, open things, carry other files).
_PDF_ACTIVE = re.compile(
    rb"/(?:JavaScript|JS|Launch|EmbeddedFiles?|RichMedia|XFA|AA|SubmitForm|ImportData|GoToR)\b"
)
_MARKUP = re.compile(rb"<\s*(?:script|html|body|iframe|svg|object|embed)\b", re.IGNORECASE)
_NAME_CHARS = re.compile(r"[^\w .-]", re.UNICODE)


class FileRefused(ValidationFailed):
    """The file is not one we keep (422); ``signal`` names an attack pattern, if any."""

    def __init__(self, message: str, *, signal: str | None = None) -> None:
        super().__init__(errors=[FieldError("body.file", message)])
        self.signal = signal


class UnsupportedFileType(UnsupportedMediaType):
    default_detail = "Only JPEG, PNG and WebP images and PDF documents are accepted."


@dataclass(frozen=True, slots=True)
class CleanFile:
    media_type: str
    filename: str
    content: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class _Collector:
    """Multipart callbacks keeping every part in memory, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: list[_Part] = []
        self._name = bytearray()
        self._value = bytearray()

    def callbacks(self) -> Any:  # python_multipart's MultipartCallbacks
        return {
            "on_part_begin": self.begin,
            "on_header_field": lambda d, s, e: self._name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self.header_end,
            "on_part_data": self.data,
        }

    def begin(self) -> None:
        self.parts.append(_Part())

    def header_end(self) -> None:
        self.parts[-1].headers[bytes(self._name).lower()] = bytes(self._value)
        self._name.clear()
        self._value.clear()

    def data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.size > self.max_bytes:
            raise PayloadTooLarge(f"The file is larger than {self.max_bytes // (1024 * 1024)} MiB.")
        part.chunks.append(bytes(data[start:end]))


def single_file_part(body: bytes, content_type: str, max_bytes: int) -> tuple[str, bytes]:
    """The file name and bytes of the one ``file`` part of a multipart/form-data body."""
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("Send the file as multipart/form-data.")
    collector = _Collector(max_bytes)
    parser = MultipartParser(boundary, collector.callbacks(), max_size=max_bytes + 64 * 1024)
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise FileRefused("The multipart body is malformed.") from exc
    files = []
    for part in collector.parts:
        _, disposition = parse_options_header(part.headers.get(b"content-disposition", b""))
        if disposition.get(b"name") != b"file" or b"filename" not in disposition:
            raise FileRefused("Send exactly one part, named 'file', with a file name.")
        name = disposition[b"filename"].decode("utf-8", errors="replace")
        files.append((name, b"".join(part.chunks)))
    if len(files) != 1:
        raise FileRefused("Send exactly one part, named 'file', with a file name.")
    return files[0]


def sniff(content: bytes) -> str | None:
    """The type the content's magic bytes say, among those accepted."""
    if content.startswith(b"\xff\xd8\xff"):
        return JPEG
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(content) >= 12 and content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return WEBP
    if content.startswith(b"%PDF-"):
        return PDF
    return None


def normalize_filename(raw: str, media_type: str) -> str:
    """A safe display name with the one extension of the detected type."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise FileRefused("The file name holds control or invisible characters.")
    name = _NAME_CHARS.sub("_", name).strip(" .")
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    if "." in stem.strip("."):
        raise FileRefused("File names with more than one extension are refused.")
    if extension and extension.lower() not in EXTENSIONS[media_type]:
        raise FileRefused(f"The file name says .{extension[:10]}, but the content is {media_type}.")
    stem = stem.strip(" ._-")[: MAX_NAME - 6] or "file"
    return f"{stem}.{EXTENSIONS[media_type][0]}"


def _clean_image(content: bytes, media_type: str) -> bytes:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as probe:
                if probe.format != PILLOW_FORMATS[media_type]:
                    raise FileRefused(
                        "The image does not decode as its own type.", signal="polyglot"
                    )
                probe.verify()
            with Image.open(io.BytesIO(content)) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FileRefused("The image cannot be decoded.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FileRefused("The image is too large to decode.", signal="decompression-bomb") from exc
    if upright.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
    out = io.BytesIO()
    if media_type == JPEG:
        upright.convert("RGB").save(out, "JPEG", quality=90, optimize=True)
    elif media_type == PNG:
        upright.save(out, "PNG", optimize=True)
    else:
        upright.save(out, "WEBP", quality=90)
    return out.getvalue()


def _check_pdf(content: bytes) -> bytes:
    if not re.match(rb"%PDF-[12]\.\d", content):
        raise FileRefused("The PDF header is malformed.")
    if b"%%EOF" not in content[-2048:]:
        raise FileRefused("The PDF is truncated or has data after its end.")
    if _PDF_ACTIVE.search(content):
        raise FileRefused(
            "PDFs with scripts, actions or embedded files are refused.", signal="pdf-active-content"
        )
    if _MARKUP.search(content):
        raise FileRefused("The PDF carries HTML or script markup.", signal="polyglot")
    return content


def clean(filename: str, content: bytes) -> CleanFile:
    """Accept or refuse one uploaded file: its detected type, a safe name and the bytes to
    keep (images re-encoded without metadata)."""
    if not content:
        raise FileRefused("The file is empty.")
    media_type = sniff(content)
    if media_type is None:
        raise UnsupportedFileType()
    name = normalize_filename(filename, media_type)
    if media_type == PDF:
        return CleanFile(media_type, name, _check_pdf(content))
    if _MARKUP.search(content) or b"%PDF-" in content:
        raise FileRefused("The image also carries another format's content.", signal="polyglot")
    kept = _clean_image(content, media_type)
    return CleanFile(media_type, name, kept)
