"""Image decoding with limits (bytes, pixels, real format) and encoding to base64.

An upload's cost is its decoded size, not its byte size: a 130 KB single-colour PNG can be 40 megapixels.
So there are two ways in, each as cheap as its caller can afford:

- ``probe_upload`` reads the header only (format and size), for a service that checks and forwards;
- ``decode_upload`` decodes at most ``max_side`` on the long side (JPEG at a reduced DCT scale, so the
  full size is never allocated; other formats decode once and shrink at once) inside a ``PixelBudget``
  shared by the process's concurrent decodes, and says how to map coordinates back to the upload.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from shared.errors import ImgPodError, PayloadTooLarge, UnsupportedMedia, ValidationFailed
from shared.pixel_budget import PixelBudget

ImageFormat = Literal["png", "jpeg", "webp"]
ALLOWED_UPLOAD_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# EXIF orientations that turn the stored pixels by 90 degrees: the upright image has width and height swapped.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Modes Pillow's reduce and resize average correctly; the rest (palette, bilevel, 16-bit, CMYK) become RGB.
_RESAMPLABLE_MODES = frozenset({"RGB", "RGBA", "L", "LA"})


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says: Pillow's format name (``JPEG``, ``PNG``, ``WEBP``) and the stored size."""

    format: str
    width: int
    height: int


@dataclass(frozen=True, slots=True, eq=False)
class DecodedImage:
    """An upload decoded at most ``max_side`` on its long side.

    ``image`` is RGB with EXIF orientation applied; ``original_size`` is the upload's size upright (as a
    viewer that applies EXIF shows it), the coordinate system a client draws in.
    """

    image: Image.Image
    original_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from ``image`` pixels to original pixels; (1.0, 1.0) when decoded at full size."""
        return self.original_size[0] / self.image.width, self.original_size[1] / self.image.height


@contextmanager
def _upload_errors() -> Iterator[None]:
    """Map what Pillow raises on hostile or broken bytes to the typed errors clients see."""
    try:
        yield
    except ImgPodError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge("image has too many pixels") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMedia("the upload is not a readable image (JPEG, PNG or WebP)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data: PIL raises OSError ("image file is truncated") and friends.
        raise ValidationFailed("the image is corrupt or truncated") from exc


def _open_checked(
    data: bytes, *, max_bytes: int, max_pixels: int, allowed_formats: frozenset[str]
) -> Image.Image:
    """``Image.open`` (header only, no pixels) plus the byte, format and pixel limits."""
    if not data:
        raise ValidationFailed("empty upload")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    with _upload_errors():
        # Only around the open: the bomb check runs there, and the filter change is process-wide.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in allowed_formats:
            raise UnsupportedMedia(f"image format {fmt or 'unknown'} is not accepted; use JPEG, PNG or WebP")
        width, height = img.size
        if width * height > max_pixels:
            raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return img


def probe_upload(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    allowed_formats: frozenset[str] = ALLOWED_UPLOAD_FORMATS,
) -> ImageInfo:
    """Check an upload from its header alone: the same refusals as ``decode_upload`` for empty, oversized,
    non-image, wrong-format and too-many-pixel uploads, without decoding a pixel.

    Corrupt image data behind a valid header is not seen here; whoever decodes it refuses it. Still PIL
    parsing (a WebP header read parses the container): call it from a thread, not on an event loop.
    """
    img = _open_checked(data, max_bytes=max_bytes, max_pixels=max_pixels, allowed_formats=allowed_formats)
    assert img.format is not None  # _open_checked refused any format outside allowed_formats
    return ImageInfo(img.format, img.width, img.height)


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so that its long side is ``max_side`` (never below 1 pixel)."""
    width, height = size
    ratio = max_side / max(width, height)
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """A copy at most ``max_side`` on the long side: a whole-pixel box reduce, then one Lanczos resize."""
    target = fit_within(img.size, max_side)
    if img.mode not in _RESAMPLABLE_MODES:
        img = flatten_to_rgb(img)
    factor = max(img.size) // max_side
    if factor >= 2:
        # Leaves the long side >= max_side, so the resize below only ever shrinks.
        img = img.reduce(factor)
    if img.size != target:
        img = img.resize(target, Image.Resampling.LANCZOS)
    return img


def decode_upload(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int | None = None,
    budget: PixelBudget | None = None,
    allowed_formats: frozenset[str] = ALLOWED_UPLOAD_FORMATS,
) -> DecodedImage:
    """Decode an uploaded image safely, at most ``max_side`` on its long side; RGB, EXIF orientation applied.

    The format comes from the bytes, not from the filename or content-type header. The pixel count is read
    from the header before any decode, so a 20000x20000 PNG of a few KB is refused without allocating 1.2 GB.

    With ``max_side`` a JPEG is decoded by libjpeg at the smallest DCT scale (1/2, 1/4, 1/8) that is still at
    least ``max_side``, so its full size never exists in memory; PNG and WebP have no such mode: they decode
    at full size and are shrunk at once. The full-size pixels are held inside ``budget`` (the pixels actually
    decoded), so concurrent decodes in this process never hold more than its capacity together; a wait past
    the budget's timeout raises ``DecodeBusy`` (429).
    """
    img = _open_checked(data, max_bytes=max_bytes, max_pixels=max_pixels, allowed_formats=allowed_formats)
    stored_size = img.size
    if max_side is not None and img.format == "JPEG" and max(img.size) > max_side:
        # Sets the decoder's scale; ``img.size`` becomes the reduced size libjpeg will produce.
        img.draft("RGB", fit_within(img.size, max_side))
    reservation = budget.reserve(img.width * img.height) if budget is not None else nullcontext()
    with reservation, _upload_errors():
        img.load()
        # Read after the load: a PNG may store its EXIF after the pixel data (its getexif would load it).
        transposed = img.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS
        if max_side is not None and max(img.size) > max_side:
            # Rebinding drops the full-size pixels before anything else is allocated.
            img = _shrink(img, max_side)
        ImageOps.exif_transpose(img, in_place=True)
        img = flatten_to_rgb(img)
    original_size = (stored_size[1], stored_size[0]) if transposed else stored_size
    return DecodedImage(img, original_size)


def flatten_to_rgb(img: Image.Image) -> Image.Image:
    """Composite transparency onto white: models and JPEG both want three opaque channels."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # No copy when it is RGB already: at full size that copy would be the largest allocation of a decode.
    return img if img.mode == "RGB" else img.convert("RGB")


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


def decode_base64_field(text: str, field: str, max_bytes: int) -> bytes:
    """The bytes of a base64 image field, refusing an oversized one before decoding it."""
    # A data URL ("data:image/png;base64,...") carries the same base64 after its comma.
    payload = text.partition(",")[2] if text.startswith("data:") else text
    # Four base64 characters per three bytes: the length alone tells "too large".
    if len(payload) > -(-max_bytes // 3) * 4:
        raise PayloadTooLarge(f"{field}: image is larger than {max_bytes} bytes", param=field)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(f"{field}: not valid base64", param=field) from None
