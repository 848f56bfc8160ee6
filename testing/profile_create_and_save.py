"""Create a profile from each selfie through the interface and save what comes back.

For every image in --selfies (default testing/selfies/), POST /v1/profile/create, then save
<name>_profile.png and <name>_features.json under testing/selfies_output/ and print a summary table.
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testing.client import HERE, OUTPUT_DIR, add_config_arg, describe_error, make_client

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arg(parser)
    parser.add_argument("--selfies", type=Path, default=HERE / "selfies")
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--style", default=None)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    files = sorted(p for p in args.selfies.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"no images in {args.selfies}; run testing/generate_test_selfies.py first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, ...]] = []
    failures = 0
    with make_client(args.config, args.timeout) as client:
        for path in files:
            form = {k: str(v) for k, v in (("style", args.style), ("seed", args.seed)) if v is not None}
            started = time.perf_counter()
            resp = client.post(
                "/v1/profile/create", files={"file": (path.name, path.read_bytes(), "image/jpeg")}, data=form
            )
            ms = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                failures += 1
                rows.append((path.stem, "FAIL", "-", "-", "-", f"{ms:.0f}", describe_error(resp)))
                continue
            body = resp.json()
            image_path = args.out / f"{path.stem}_profile.png"
            image_path.write_bytes(base64.b64decode(body["profile_image_base64"]))
            features_path = args.out / f"{path.stem}_features.json"
            features_path.write_text(json.dumps(body["features"], indent=2))
            (args.out / f"{path.stem}_response.json").write_text(
                json.dumps({k: v for k, v in body.items() if k != "profile_image_base64"}, indent=2)
            )
            face = body["face"]
            rows.append(
                (
                    path.stem,
                    "ok",
                    str(face["detected"]),
                    f"{face['quality_score']:.2f}",
                    str(body["seed"]),
                    f"{ms:.0f}",
                    str(image_path),
                )
            )
    header = ("selfie", "status", "face", "quality", "seed", "ms", "output / error")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
