"""``POST /v1/identity/compare`` on a real selfie worker process: nudenet's face detector, the tiny Qwen2-VL.

The worker runs with the test gate (shared/test_hooks.py), so "these five requests are all in the worker at
once" is a state the test creates and observes before it lets them run, not a guess about timing.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data

from devtools.photos import astronaut, encode
from devtools.service_process import ServiceProcess
from tests.helpers.photos import huge_png_header, truncated_jpeg
from tests.helpers.waiting import WorkerGate, until
from tests.integration.test_selfie_worker import ANALYZE, AUTH, MODULE, TOKEN, worker_env

pytestmark = pytest.mark.integration

COMPARE = "/v1/identity/compare"
MAX_IMAGE_BYTES = 300_000
# Four compares and one analysis run at once; one more may wait; the next is refused.
CONCURRENT = 5
TIMEOUT_S = 120.0


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def jpeg(img: Image.Image) -> str:
    return b64(encode(img, "JPEG", quality=90))


ASTRONAUT = jpeg(astronaut())
SMALLER = jpeg(astronaut().resize((320, 320), Image.Resampling.LANCZOS))
CAMERAMAN = jpeg(Image.fromarray(data.camera()).convert("RGB"))
PLAIN = jpeg(Image.new("RGB", (320, 240), (90, 140, 200)))


@pytest.fixture(scope="module")
def worker(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("identity")
    env = worker_env(
        tiny_models,
        tmp,
        SELFIE_TEST_HOOKS="1",
        SELFIE_MAX_CONCURRENT=str(CONCURRENT),
        SELFIE_QUEUE_LIMIT="1",
        SELFIE_IDENTITY_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
    )
    with ServiceProcess(MODULE, env=env, log_dir=tmp) as svc:
        yield svc


def post(svc: ServiceProcess, body: dict | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(
        f"{svc.url}{COMPARE}", headers=headers if headers is not None else AUTH, timeout=TIMEOUT_S, **kwargs
    )


def test_healthz_names_the_embedder(worker: ServiceProcess) -> None:
    body = httpx.get(f"{worker.url}/healthz", timeout=10).json()
    assert body["status"] == "ok"
    assert body["identity_embedder"] == "vlm:qwen2-vl-tiny"


def test_requires_internal_token(worker: ServiceProcess) -> None:
    resp = post(worker, {"reference": ASTRONAUT, "candidates": [ASTRONAUT]}, headers={})
    assert resp.status_code == 401


def test_scores_in_candidate_order(worker: ServiceProcess, tiny_models: dict[str, Path]) -> None:
    resp = post(worker, {"reference": ASTRONAUT, "candidates": [ASTRONAUT, PLAIN, CAMERAMAN, SMALLER]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    same, faceless, other, smaller = body["scores"]
    assert same == {"similarity": pytest.approx(1.0, abs=1e-5), "reason": None}
    assert faceless == {"similarity": None, "reason": "no_face_in_candidate"}
    for score in (other, smaller):
        assert score["reason"] is None and -1.0 <= score["similarity"] <= 1.0
    # Holds on the tiny random model for these photos (not a claim of recognition: meaningful is false).
    assert other["similarity"] < smaller["similarity"] < same["similarity"]
    assert (body["embedder"], body["meaningful"]) == ("vlm:qwen2-vl-tiny", False)
    assert set(body["timings_ms"]) == {"parse", "decode", "detect", "embed"}
    assert str(tiny_models["qwen_vl"]) not in resp.text


def test_faceless_reference(worker: ServiceProcess) -> None:
    resp = post(worker, {"reference": PLAIN, "candidates": [ASTRONAUT, CAMERAMAN]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["scores"] == [{"similarity": None, "reason": "no_face_in_reference"}] * 2


def refused(resp: httpx.Response, status: int, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["request_id"] and body["code"]
    if field is not None:
        assert body["detail"].startswith(f"{field}: "), body
    return body


def test_five_candidates_are_a_422(worker: ServiceProcess) -> None:
    refused(post(worker, {"reference": ASTRONAUT, "candidates": [ASTRONAUT] * 5}), 422, "candidates")
    refused(post(worker, {"reference": ASTRONAUT, "candidates": []}), 422, "candidates")
    # Requests forbid unknown fields, like every request model.
    refused(post(worker, {"reference": ASTRONAUT, "candidates": [ASTRONAUT], "seed": 1}), 422, "seed")
    refused(post(worker, {"candidates": [ASTRONAUT]}), 422, "reference")
    refused(post(worker, b"{not json"), 422, None)


def test_bad_images_name_their_field(worker: ServiceProcess) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = encode(noise, "PNG")
    assert len(big) > MAX_IMAGE_BYTES
    cases = [
        (b64(big), 413, "payload_too_large"),
        (b64(huge_png_header()), 413, "payload_too_large"),
        (b64(truncated_jpeg()), 422, "validation_error"),
        ("this is not base64!", 422, "validation_error"),
        (b64(b"GIF? no, nothing at all" * 8), 415, "unsupported_media"),
    ]
    for payload, status, code in cases:
        body = refused(
            post(worker, {"reference": ASTRONAUT, "candidates": [ASTRONAUT, payload]}), status, None
        )
        assert body["code"] == code and body["detail"].startswith("candidates[1]: "), body
    body = refused(
        post(worker, {"reference": b64(truncated_jpeg()), "candidates": [ASTRONAUT]}), 422, "reference"
    )
    # A short public message: no library text, no paths.
    assert "/tmp" not in body["detail"] and "Traceback" not in body["detail"]


def test_a_body_over_the_json_limit_is_a_413(worker: ServiceProcess) -> None:
    resp = post(worker, b"{" + b" " * (11 * 1024 * 1024 + 10) + b"}")
    assert resp.status_code == 413, resp.text


async def compare_call(client: httpx.AsyncClient, candidates: list[str]) -> httpx.Response:
    return await client.post(COMPARE, json={"reference": ASTRONAUT, "candidates": candidates})


async def analyze_call(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(ANALYZE, files={"file": ("selfie.png", encode(astronaut()), "image/png")})


def test_overlapping_compares_and_an_analysis_all_answer(worker: ServiceProcess) -> None:
    """Four compares and an analysis hold the five slots together, then run at once on the shared models.

    The compares share the analyses' admission: with all five slots held, one more compare waits and the
    next is refused with the analyses' 429.
    """
    expected = post(worker, {"reference": ASTRONAUT, "candidates": [SMALLER, CAMERAMAN, ASTRONAUT]}).json()
    gate = WorkerGate(worker.url, TOKEN)
    mixes = [[SMALLER], [CAMERAMAN, ASTRONAUT], [SMALLER, CAMERAMAN, PLAIN], [ASTRONAUT, SMALLER, CAMERAMAN]]

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=worker.url, headers=AUTH, timeout=TIMEOUT_S) as client:
            with gate.closed():
                tasks = [asyncio.create_task(compare_call(client, mix)) for mix in mixes]
                tasks.append(asyncio.create_task(analyze_call(client)))
                await asyncio.to_thread(gate.wait_parked, CONCURRENT)
                # Two more: whichever the worker counts first takes the one wait place, the other is
                # refused at once. A refusal can only happen once the first is counted as waiting.
                extra = [asyncio.create_task(compare_call(client, [ASTRONAUT])) for _ in range(2)]
                await until(lambda: any(t.done() for t in extra), what="one of two extra refused")
                [over] = [t.result() for t in extra if t.done()]
                [waiting] = [t for t in extra if not t.done()]
                assert not any(t.done() for t in tasks)
            return list(await asyncio.gather(*tasks)), await waiting, over

    responses, waited, over = asyncio.run(scenario())
    for resp in responses:
        assert resp.status_code == 200, resp.text
    by_image = {
        SMALLER: expected["scores"][0]["similarity"],
        CAMERAMAN: expected["scores"][1]["similarity"],
        ASTRONAUT: expected["scores"][2]["similarity"],
    }
    for mix, resp in zip(mixes, responses[:4], strict=True):
        scores = resp.json()["scores"]
        for image, score in zip(mix, scores, strict=True):
            if image == PLAIN:
                assert score == {"similarity": None, "reason": "no_face_in_candidate"}
            else:
                # The same number as the lone request: nothing leaked between the overlapping calls.
                assert score["similarity"] == pytest.approx(by_image[image], abs=1e-5)
    analysis = responses[4].json()
    assert analysis["face"]["detected"] is True and analysis["face"]["face_count"] == 1
    assert waited.status_code == 200, waited.text
    assert waited.json()["scores"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert over.status_code == 429, over.text
    assert over.json()["code"] == "overloaded" and int(over.headers["Retry-After"]) >= 1
    assert gate.state()["parked"] == 0


@pytest.fixture(scope="module")
def worker_off(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("identity-off")
    env = worker_env(tiny_models, tmp, SELFIE_IDENTITY_EMBEDDER="off")
    with ServiceProcess(MODULE, env=env, log_dir=tmp) as svc:
        yield svc


def test_embedder_off_is_a_503_that_says_so(worker_off: ServiceProcess) -> None:
    health = httpx.get(f"{worker_off.url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["identity_embedder"] == "off"
    body = refused(post(worker_off, {"reference": ASTRONAUT, "candidates": [ASTRONAUT]}), 503, None)
    assert body["code"] == "model_unavailable" and "SELFIE_IDENTITY_EMBEDDER=off" in body["detail"]
    # The analyses still run.
    resp = httpx.post(
        f"{worker_off.url}{ANALYZE}",
        files={"file": ("selfie.png", encode(astronaut()), "image/png")},
        headers=AUTH,
        timeout=TIMEOUT_S,
    )
    assert resp.status_code == 200, resp.text
