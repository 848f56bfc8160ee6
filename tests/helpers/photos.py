"""Variants of the astronaut photo (``devtools.photos``) and hand-made bad uploads for the selfie tests."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image, ImageFilter

from devtools.photos import astronaut, encode

# Where the astronaut's face is in skimage.data.astronaut() (512x512): x 170-280, y 75-190.
ASTRONAUT_FACE = (170, 75, 110, 115)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def blurred(img: Image.Image, radius: float = 4.0) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def darkened(img: Image.Image, factor: float = 0.25) -> Image.Image:
    return Image.fromarray((np.asarray(img, dtype=np.float32) * factor).astype(np.uint8))


def exif_rotated_jpeg(img: Image.Image) -> bytes:
    """The pixels stored rotated 90 degrees counter-clockwise with EXIF Orientation=6 (rotate 90 CW to view),
    as a phone held sideways writes them: a reader that applies EXIF sees the upright photo."""
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A few dozen bytes that claim to be a width x height PNG: a decompression bomb without the bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    full = encode(astronaut(), "JPEG", quality=90)
    return full[: len(full) // 3]


def gif() -> bytes:
    return encode(astronaut().convert("P"), "GIF")


def two_people(scale: float = 0.75) -> Image.Image:
    """The astronaut at full size on the left and a smaller copy on the right of a 1024x512 canvas."""
    full = astronaut()
    canvas = Image.new("RGB", (1024, 512), (128, 128, 128))
    canvas.paste(full, (0, 0))
    small = full.resize((round(512 * scale), round(512 * scale)))
    canvas.paste(small, (512, 512 - small.height))
    return canvas
