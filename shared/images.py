"""Image decoding with limits (bytes, pixels, real format) and encoding to base64."""

from __future__ import annotations

import base64
import io
import warnings
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import PayloadTooLarge, UnsupportedMedia, ValidationFailed

ImageFormat = Literal["png", "jpeg", "webp"]
ALLOWED_UPLOAD_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


def decode_upload(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    allowed_formats: frozenset[str] = ALLOWED_UPLOAD_FORMATS,
) -> Image.Image:
    """Decode an uploaded image safely; return RGB with EXIF orientation applied.

    The format comes from the bytes, not from the filename or content-type header. The pixel count is read
    from the header before the full decode, so a 20000x20000 PNG of a few KB is refused without allocating
    1.2 GB.
    """
    if not data:
        raise ValidationFailed("empty upload")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in allowed_formats:
                raise UnsupportedMedia(
                    f"image format {fmt or 'unknown'} is not accepted; use JPEG, PNG or WebP"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            img.load()
    except (UnsupportedMedia, PayloadTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge("image has too many pixels") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia("the upload is not a readable image (JPEG, PNG or WebP)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data: PIL raises OSError ("image file is truncated") and friends.
        raise ValidationFailed("the image is corrupt or truncated") from exc
    img = ImageOps.exif_transpose(img)
    return flatten_to_rgb(img)


def flatten_to_rgb(img: Image.Image) -> Image.Image:
    """Composite transparency onto white: models and JPEG both want three opaque channels."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def encode_image(img: Image.Image, fmt: ImageFormat = "png", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def encode_image_base64(img: Image.Image, fmt: ImageFormat = "png", quality: int = 92) -> str:
    return base64.b64encode(encode_image(img, fmt, quality)).decode("ascii")


def decode_base64_image(text: str) -> Image.Image:
    """For tests and clients: base64 -> PIL image, fully decoded."""
    img = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    img.load()
    return img
