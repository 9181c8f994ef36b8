"""Media files of every retrieval test go to a fresh folder; helpers that build test files."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image as PILImage


def image_bytes(
    color: tuple[int, int, int] = (200, 30, 30), size: int = 40, fmt: str = "PNG"
) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (size, size), color).save(out, format=fmt)
    return out.getvalue()


def polyglot_bytes(markup: bytes, fmt: str = "JPEG") -> bytes:
    """A valid image that also carries `markup` (in a JPEG or GIF comment, a PNG text chunk)."""
    out = io.BytesIO()
    image = PILImage.new("RGB", (16, 16), (10, 20, 30))
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", markup.decode("latin-1"))
        image.save(out, format="PNG", pnginfo=info)
    else:
        image.save(out, format=fmt, comment=markup)
    data = out.getvalue()
    assert markup in data
    return data


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
