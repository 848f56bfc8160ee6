"""Make test selfies from real offline photos plus transformed variants.

Writes JPEGs to --out (default testing/selfies/): the astronaut portrait, an EXIF-rotated copy (pixels
rotated, orientation tag set, so a correct reader sees it upright), dark, blurred, a small face on a big
canvas, a face photo from LFW, and photos with no face at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

HERE = Path(__file__).resolve().parent


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def variants() -> dict[str, Callable[[], tuple[Image.Image, Image.Exif | None]]]:
    def plain() -> tuple[Image.Image, None]:
        return astronaut(), None

    def rotated_exif() -> tuple[Image.Image, Image.Exif]:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation 6: the viewer rotates 90 degrees clockwise to show it upright
        return astronaut().transpose(Image.Transpose.ROTATE_90), exif

    def dark() -> tuple[Image.Image, None]:
        return ImageEnhance.Brightness(astronaut()).enhance(0.25), None

    def blurred() -> tuple[Image.Image, None]:
        return astronaut().filter(ImageFilter.GaussianBlur(6)), None

    def small_face() -> tuple[Image.Image, None]:
        canvas = Image.new("RGB", (1600, 1200), (200, 205, 210))
        canvas.paste(astronaut().resize((256, 256)), (900, 600))
        return canvas, None

    def no_face() -> tuple[Image.Image, None]:
        from skimage import data

        return Image.fromarray(data.coffee()), None

    def no_face_rocket() -> tuple[Image.Image, None]:
        from skimage import data

        return Image.fromarray(data.rocket()), None

    def lfw_face() -> tuple[Image.Image, None]:
        from skimage import data

        face = (data.lfw_subset()[0] * 255).astype(np.uint8)
        return Image.fromarray(face).convert("RGB").resize((200, 200), Image.Resampling.BICUBIC), None

    return {
        "astronaut": plain,
        "astronaut_rotated_exif": rotated_exif,
        "astronaut_dark": dark,
        "astronaut_blurred": blurred,
        "small_face": small_face,
        "lfw_face": lfw_face,
        "no_face_coffee": no_face,
        "no_face_rocket": no_face_rocket,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "selfies")
    parser.add_argument("--only", action="append", help="make only these (repeatable)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in variants().items():
        if args.only and name not in args.only:
            continue
        img, exif = make()
        path = args.out / f"{name}.jpg"
        img.save(path, format="JPEG", quality=92, exif=exif or Image.Exif())
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
