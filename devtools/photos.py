"""A real photo (scikit-image's astronaut portrait, offline) and the encoding that turns it into an upload."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage import data


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())
