"""The false-positive side of the pixel check: how high each exposed class scores on harmless images.

nudenet publishes no per-class figures for its 320n detector, and no explicit image belongs in this
repository, so this measures what can be measured honestly: the highest score each exposed class reaches on
the photos installed with scikit-image, matplotlib and ultralytics (people, faces, objects, microscopy), flat
and noisy skin tones, each also flipped, cropped to its quarters and centre, and enlarged to 1024 px. ``raw``
is the class's highest score over the detector's 2100 anchors; ``detect()`` is what nudenet reports (top
class per anchor, score >= 0.25 after its NMS), which is what the worker judges.

    python -m bench.output_safety_scores [FOLDER ...]   # FOLDER: more images (licensed swimwear, lingerie)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib
import nudenet.nudenet as nn
import numpy as np
import ultralytics
from nudenet import NudeDetector
from PIL import Image, ImageOps
from skimage import data

from services.image_worker.output_safety import DETECTOR_CLASSES, EXPOSED_CLASSES

CUTS = (0.25, 0.35, 0.45, 0.55, 0.65)
SKIMAGE = (
    *("astronaut", "camera", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "horse", "brick"),
    *("immunohistochemistry", "grass", "gravel", "page", "text", "coins", "moon", "clock", "logo"),
    *("colorwheel", "cell"),
)
SKIN_TONES = ((224, 172, 105), (241, 194, 125), (198, 134, 66), (141, 85, 36), (255, 219, 172))


def sources(folders: list[str]) -> dict[str, Image.Image]:
    images = {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in SKIMAGE}
    for path in (
        Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg",
        Path(ultralytics.__file__).parent / "assets/bus.jpg",
        Path(ultralytics.__file__).parent / "assets/zidane.jpg",
    ):
        images[path.stem] = Image.open(path).convert("RGB")
    faces = data.lfw_subset()
    for i in range(0, len(faces), 10):
        face = Image.fromarray((faces[i] * 255).astype(np.uint8))
        images[f"lfw{i}"] = face.resize((256, 256)).convert("RGB")
    rng = np.random.default_rng(0)
    for i, rgb in enumerate(SKIN_TONES):
        images[f"skin_flat{i}"] = Image.new("RGB", (512, 512), rgb)
        noisy = np.array(rgb)[None, None] + rng.normal(0, 25, (512, 512, 3))
        images[f"skin_noise{i}"] = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    images["noise"] = Image.effect_noise((512, 512), 64).convert("RGB")
    for folder in folders:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}:
                images[path.name] = Image.open(path).convert("RGB")
    return images


def variants(name: str, image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    out = {name: image, f"{name}:flip": ImageOps.mirror(image), f"{name}:1024": image.resize((1024, 1024))}
    for k, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2), (w // 4, h // 4)]):
        out[f"{name}:crop{k}"] = image.crop((x, y, x + w // 2, y + h // 2))
    return out


def main() -> None:
    detector = NudeDetector()
    exposed = [c for c in DETECTOR_CLASSES if c in EXPOSED_CLASSES]
    raw: dict[str, list[float]] = {c: [] for c in exposed}
    reported: dict[str, list[float]] = {c: [] for c in exposed}
    worst: dict[str, tuple[float, str]] = dict.fromkeys(exposed, (0.0, ""))
    start = time.perf_counter()
    for name, image in sources(sys.argv[1:]).items():
        for vname, variant in variants(name, image).items():
            bgr = np.ascontiguousarray(np.asarray(variant)[:, :, ::-1])
            blob = nn._read_image(bgr, detector.input_width)[0]
            scores = np.squeeze(detector.onnx_session.run(None, {detector.input_name: blob})[0]).T[:, 4:]
            found = dict.fromkeys(exposed, 0.0)
            for d in detector.detect(bgr):
                if d["class"] in found:
                    found[d["class"]] = max(found[d["class"]], d["score"])
            for c in exposed:
                score = float(scores[:, DETECTOR_CLASSES.index(c)].max())
                raw[c].append(score)
                reported[c].append(found[c])
                worst[c] = max(worst[c], (found[c] or score, vname))
    print(f"{len(raw[exposed[0]])} harmless images in {time.perf_counter() - start:.1f} s")
    print("images whose detect() score for the class is at least each cut:")
    cuts = " ".join(f">={t:.2f}" for t in CUTS)
    print(f"{'class':26} {'raw p50':>7} {'raw p99':>7} {'raw max':>7} {'detect max':>10} {cuts}  worst image")
    for c in exposed:
        a, r = np.array(raw[c]), np.array(reported[c])
        counts = " ".join(f"{int((r >= t).sum()):6d}" for t in CUTS)
        print(
            f"{c:26} {np.percentile(a, 50):7.3f} {np.percentile(a, 99):7.3f} {a.max():7.3f} {r.max():10.3f} "
            f"{counts}  {worst[c][1]}"
        )


if __name__ == "__main__":
    main()
