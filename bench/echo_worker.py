"""An ECHO WORKER for latency measurement and admission tests: a cheap upstream, not a model stub.

``bench.bench_interface_overhead --upstream echo`` puts it behind the interface to measure what the interface
itself adds per proxied call at hundreds of requests per second, a rate at which even the tiny Z-Image model
(tens of ms of CPU per call) would saturate a small machine and bury the overhead under queueing.

It is a real HTTP server (FastAPI under uvicorn, started like every service by
``devtools.service_process.ServiceProcess("bench.echo_worker")``) that speaks the image worker's wire
protocol:

- ``GET /healthz``: 200 ``{"status": "ok", "concurrency": N, "max_batch": 1}`` (N from ``ECHO_CONCURRENCY``,
  default 8), so the interface's pool puts it in rotation and sizes its queue as for an image worker;
- ``POST /v1/generate``: drains the body and answers at once with one fixed, valid ``GenerateResponse``
  (a 64x64 PNG of seeded noise, so the payload is the size the tiny-model mode returns; ``ECHO_IMAGE_SIDE``
  changes it), holding ``n`` copies when the request asks for several (``more_images``, as a worker answers
  ``n``). No generation and no work: the answers are built once at start-up, and the body is parsed only when
  it names ``n``.

``ECHO_DELAY_MS`` (default 0) holds each answer that long: a worker with a fixed service time, so admission
tests and benches (fair share, rate limits: tests/integration/test_rate_limits.py, bench/bench_fair_share.py)
know the stack's capacity exactly, concurrency / delay requests per second, whatever the machine.

It is used only by those and never stands in for the model path in tests or in the stack.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random

from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

from shared.image_params import MAX_IMAGES
from shared.images import encode_image_base64
from shared.models import GenerateResponse

JSON = "application/json"


def _fixed_generate_body(side: int, n: int = 1) -> bytes:
    rng = random.Random(7)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    body = {
        "image_base64": encode_image_base64(image, "png"),
        "format": "png",
        "seed": 7,
        "width": side,
        "height": side,
        "steps": 1,
        "guidance_scale": 0.0,
        "prompt_used": "a lighthouse on a cliff",
        "prompt_tokens": 6,
        "prompt_truncated": False,
        "soft_blocked": False,
        "safety_checked": False,
        "model": "echo-worker (latency measurement, no model)",
        "role": "text2img",
        "timings_ms": {},
    }
    body["more_images"] = [{"image_base64": body["image_base64"], "seed": 7 + i} for i in range(1, n)]
    return json.dumps(body, separators=(",", ":")).encode()


def create_app() -> FastAPI:
    concurrency = int(os.environ.get("ECHO_CONCURRENCY", "8"))
    side = int(os.environ.get("ECHO_IMAGE_SIDE", "64"))
    answers = {n: _fixed_generate_body(side, n) for n in range(1, MAX_IMAGES + 1)}
    delay_s = float(os.environ.get("ECHO_DELAY_MS", "0")) / 1000
    health_body = json.dumps(
        {"status": "ok", "service": "echo_worker", "concurrency": concurrency, "max_batch": 1}
    ).encode()
    app = FastAPI(title="echo worker (latency measurement upstream)", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(health_body, media_type=JSON)

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        raw = await request.body()
        n = json.loads(raw).get("n", 1) if b'"n"' in raw else 1
        if delay_s:
            await asyncio.sleep(delay_s)
        return Response(answers[n], media_type=JSON)

    return app


def _check() -> None:
    """``python -m bench.echo_worker``: the fixed answer parses as a GenerateResponse holding a real PNG."""
    raw = _fixed_generate_body(64)
    parsed = GenerateResponse.model_validate_json(raw)
    Image.open(io.BytesIO(base64.b64decode(parsed.image_base64))).verify()
    print(f"echo worker answer: a valid GenerateResponse, {len(raw)} bytes")


if __name__ == "__main__":
    _check()
