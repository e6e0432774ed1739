"""What bytes are, when Pillow cannot open them: recognised-but-unsupported containers
(HEIF/AVIF, JPEG XL), known image signatures with a broken header (CORRUPT or TRUNCATED, with the
format plugin's own complaint), and a description of non-image data (SVG, HTML, JSON, text).
Used by `curation.imaging.policy.open_header` to turn an unidentified file into an error code.
"""

from __future__ import annotations

import importlib
from io import BytesIO

from curation import errors

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs",
                          b"mif1", b"msf1", b"avif", b"avis"})


def sniff_unsupported(data: bytes) -> str | None:
    """Name of a recognised image container that Pillow cannot decode (HEIF/AVIF, JPEG XL)."""
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return f"HEIF/AVIF (ftyp brand {data[8:12].decode('ascii', 'replace')})"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    return None


_MAGIC_PLUGINS = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "PngImagePlugin", "PngImageFile"),
    (b"\xff\xd8\xff", "JPEG", "JpegImagePlugin", "JpegImageFile"),
    (b"GIF87a", "GIF", "GifImagePlugin", "GifImageFile"),
    (b"GIF89a", "GIF", "GifImagePlugin", "GifImageFile"),
    (b"II*\x00", "TIFF", "TiffImagePlugin", "TiffImageFile"),
    (b"MM\x00*", "TIFF", "TiffImagePlugin", "TiffImageFile"),
    (b"BM", "BMP", "BmpImagePlugin", "BmpImageFile"),
)


def broken_known_format(data: bytes) -> tuple[str, str] | None:
    """For bytes that carry a known image signature but that no plugin accepted: the code
    (CORRUPT or TRUNCATED) and the format plugin's own complaint (e.g. a bad CRC)."""
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    plugin_ref = next(((name, module, cls) for magic, name, module, cls in _MAGIC_PLUGINS if data.startswith(magic)), None)
    if plugin_ref is None:
        if not is_webp:
            return None
        plugin_ref = ("WEBP", "WebPImagePlugin", "WebPImageFile")
    name, module, cls = plugin_ref

    try:
        plugin = getattr(importlib.import_module(f"PIL.{module}"), cls)
        plugin(BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - we want the plugin's reason, whatever its type
        code, msg = errors.classify_exception(exc, "decode")
        return code, f"{name} signature but unreadable header: {msg}"
    return errors.CORRUPT, f"{name} signature but no decoder accepted the header"


def describe_non_image(data: bytes) -> str:
    """A short description of bytes no image decoder recognises."""
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG (vector) document; no raster decoder"
    if head.startswith(b"<!doctype html") or head.startswith(b"<html") or b"<html" in head:
        return "HTML document (an error page saved as an image?)"
    if head.startswith(b"{") or head.startswith(b"["):
        return "JSON/text document"
    try:
        data[:512].decode("utf-8")
        return "text document"
    except UnicodeDecodeError:
        return "unrecognised binary data"
