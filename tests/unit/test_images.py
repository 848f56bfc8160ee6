"""Upload probing and scaled decoding on real encoded photos: Pillow decodes every byte, nothing is faked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from devtools.photos import astronaut, encode
from shared.errors import PayloadTooLarge, UnsupportedMedia, ValidationFailed
from shared.images import decode_upload, fit_within, probe_upload
from shared.pixel_budget import DecodeBusy, PixelBudget
from tests.helpers.photos import exif_rotated_jpeg, gif, huge_png_header, truncated_jpeg

LIMITS = {"max_bytes": 20 * 1024 * 1024, "max_pixels": 40_000_000}
SIDE = 3000


class RecordingBudget(PixelBudget):
    """A real budget that also records what each decode asked for: the pixels it was about to decode."""

    def __init__(self) -> None:
        super().__init__(100_000_000, trim_after_px=None)
        self.requests: list[int] = []

    @contextmanager
    def reserve(self, px: int, timeout_s: float | None = None) -> Iterator[int]:
        self.requests.append(px)
        with super().reserve(px, timeout_s) as cost:
            yield cost


@pytest.fixture(scope="module")
def big() -> Image.Image:
    """The astronaut upscaled to 3000 px: a real photo, larger than the analysis needs."""
    return astronaut().resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b.resize(a.size), np.int16)).mean())


# --- probe ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_probe_reads_format_and_size(fmt: str) -> None:
    info = probe_upload(encode(astronaut().resize((640, 480)), fmt), **LIMITS)
    assert (info.format, info.width, info.height) == (fmt, 640, 480)


def test_probe_reads_the_header_only() -> None:
    # A valid 6000x6000 header over 64 bytes of pixel data: decoding would fail, the probe never decodes.
    header_only = huge_png_header(6000, 6000)
    info = probe_upload(header_only, **LIMITS)
    assert (info.width, info.height) == (6000, 6000)
    with pytest.raises(ValidationFailed):
        decode_upload(header_only, **LIMITS)
    # The same for a JPEG cut short: its header is whole, its pixels are not.
    assert probe_upload(truncated_jpeg(), **LIMITS).format == "JPEG"
    with pytest.raises(ValidationFailed):
        decode_upload(truncated_jpeg(), **LIMITS)


@pytest.mark.parametrize(
    ("payload", "limits", "error"),
    [
        (b"", LIMITS, ValidationFailed),
        (b"x" * 2048, {"max_bytes": 1024, "max_pixels": 10**6}, PayloadTooLarge),
        (huge_png_header(), LIMITS, PayloadTooLarge),  # 20000x20000: Pillow's own bomb guard
        (huge_png_header(7000, 7000), LIMITS, PayloadTooLarge),  # 49 Mpx: over max_pixels
        (b"plain text, not an image" * 10, LIMITS, UnsupportedMedia),
        (gif(), LIMITS, UnsupportedMedia),
    ],
    ids=["empty", "too-many-bytes", "bomb", "too-many-pixels", "text", "gif"],
)
def test_probe_and_decode_refuse_alike(
    payload: bytes, limits: dict[str, int], error: type[Exception]
) -> None:
    with pytest.raises(error):
        probe_upload(payload, **limits)
    with pytest.raises(error):
        decode_upload(payload, max_side=1024, **limits)


# --- scaled decode -----------------------------------------------------------------------------------


def test_jpeg_decodes_at_a_reduced_dct_scale(big: Image.Image) -> None:
    budget = RecordingBudget()
    decoded = decode_upload(encode(big, "JPEG", quality=90), max_side=1024, budget=budget, **LIMITS)
    # libjpeg decoded 1/2 scale (1500 px: the smallest DCT scale still >= 1024), never the 3000 px image.
    assert budget.requests == [1500 * 1500]
    assert decoded.image.size == (1024, 1024) and decoded.image.mode == "RGB"
    assert decoded.original_size == (SIDE, SIDE)
    assert decoded.scale == pytest.approx((SIDE / 1024, SIDE / 1024))
    assert mean_abs_diff(decoded.image, big) < 6
    assert budget.in_use_px == 0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_png_and_webp_decode_once_then_shrink(big: Image.Image, fmt: str) -> None:
    budget = RecordingBudget()
    decoded = decode_upload(encode(big, fmt), max_side=1024, budget=budget, **LIMITS)
    # No reduced decode for these formats: the full size is what the budget had to cover.
    assert budget.requests == [SIDE * SIDE]
    assert max(decoded.image.size) <= 1024 and decoded.image.mode == "RGB"
    assert decoded.original_size == (SIDE, SIDE)
    assert mean_abs_diff(decoded.image, big) < 6


def test_without_max_side_or_when_small_the_image_is_whole() -> None:
    photo = astronaut()
    for max_side in (None, 1024):
        decoded = decode_upload(encode(photo, "JPEG", quality=95), max_side=max_side, **LIMITS)
        assert decoded.image.size == (512, 512) and decoded.scale == (1.0, 1.0)
    assert decode_upload(encode(photo), **LIMITS).image.size == (512, 512)


def test_exif_orientation_is_applied_and_the_original_size_is_upright() -> None:
    # 3000x2000 upright, stored as 2000x3000 with Orientation=6, as a phone writes it.
    upright = astronaut().resize((3000, 2000))
    decoded = decode_upload(exif_rotated_jpeg(upright), max_side=1024, **LIMITS)
    assert decoded.original_size == (3000, 2000)
    assert decoded.image.size == fit_within((3000, 2000), 1024) == (1024, 683)
    assert mean_abs_diff(decoded.image, upright) < 8


def test_transparency_and_palette_uploads_are_flattened_after_shrinking() -> None:
    rgba = Image.new("RGBA", (2400, 1200), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 1200, 1200))
    decoded = decode_upload(encode(rgba), max_side=600, **LIMITS)
    assert decoded.image.size == (600, 300) and decoded.image.mode == "RGB"
    assert decoded.image.getpixel((100, 150)) == (255, 0, 0)
    assert decoded.image.getpixel((500, 150)) == (255, 255, 255)  # transparent -> white
    palette = astronaut().resize((2048, 2048)).convert("P")
    decoded = decode_upload(encode(palette), max_side=512, **LIMITS)
    assert decoded.image.size == (512, 512) and decoded.image.mode == "RGB"


def test_a_decode_that_cannot_get_budget_is_busy_not_corrupt(big: Image.Image) -> None:
    budget = PixelBudget(1_000_000, timeout_s=0.05, trim_after_px=None)
    upload = encode(big, "JPEG")
    with budget.reserve(1_000_000), pytest.raises(DecodeBusy) as caught:
        decode_upload(upload, max_side=1024, budget=budget, **LIMITS)
    assert caught.value.status_code == 429 and caught.value.headers()["Retry-After"]
    # Once the budget is free the same upload decodes: it is larger than the whole budget, so it runs alone.
    assert decode_upload(upload, max_side=1024, budget=budget, **LIMITS).image.size == (1024, 1024)
