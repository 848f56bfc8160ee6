"""Run the chat image flows (1:1, shorts, scenes) through the interface and save images and captions.

Optionally with a persona: the features JSON that profile creation saved
(testing/selfies_output/*_features.json).
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

from testing.client import OUTPUT_DIR, add_config_arg, describe_error, make_client

ROUTES = {
    "1to1": "/v1/chat/1to1/imagegen",
    "shorts": "/v1/chat/shorts/generate",
    "scenes": "/v1/chat/scenes/generate",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_arg(parser)
    parser.add_argument("--kinds", nargs="+", choices=sorted(ROUTES), default=list(ROUTES))
    parser.add_argument("--message", default="Send me a picture of you at the beach at sunset")
    parser.add_argument("--persona", type=Path, default=None, help="features JSON from profile creation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, object] = {"message": args.message}
    if args.persona:
        payload["persona"] = json.loads(args.persona.read_text())
    if args.seed is not None:
        payload["seed"] = args.seed
    failures = 0
    with make_client(args.config, args.timeout) as client:
        for kind in args.kinds:
            started = time.perf_counter()
            resp = client.post(ROUTES[kind], json=payload)
            ms = (time.perf_counter() - started) * 1000
            if resp.status_code != 200:
                failures += 1
                print(f"{kind:7s} FAIL {ms:7.0f} ms  {describe_error(resp)}")
                continue
            body = resp.json()
            image_path = args.out / f"chat_{kind}.png"
            image_path.write_bytes(base64.b64decode(body["image_base64"]))
            (args.out / f"chat_{kind}.json").write_text(
                json.dumps({k: v for k, v in body.items() if k != "image_base64"}, indent=2)
            )
            print(
                f"{kind:7s} ok   {ms:7.0f} ms  {image_path}  source={body['source']} "
                f"caption_source={body['caption_source']}  caption: {body['caption']!r}"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
