"""The four image workers over HTTP, on the tiny Z-Image checkpoint, through the production loading code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from devtools.service_process import ServiceProcess, all_running
from shared.images import decode_base64_image as decode
from shared.models import Features
from shared.persona import describe_persona
from tests.helpers.waiting import health_after_loading

pytestmark = pytest.mark.integration

TOKEN = "test-internal-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROLES = {
    "profile": "/v1/profile/generate",
    "chat1to1": "/v1/chat/1to1/generate",
    "shorts": "/v1/chat/shorts/generate",
    "scenes": "/v1/chat/scenes/generate",
}
FEATURES = {"hair_color": "auburn", "hair_style": "curly", "eye_color": "green", "age_range": "30-40"}


def image_env(model_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "IMAGE_MODEL_ID": str(model_dir),
        "IMAGE_DEFAULT_WIDTH": "64",
        "IMAGE_DEFAULT_HEIGHT": "64",
        "IMAGE_MAX_SIDE": "512",
        "IMAGE_DEVICES": "cpu",
        "IMAGE_INTERNAL_TOKEN": TOKEN,
        **extra,
    }


def body_for(role: str, **extra: object) -> dict[str, object]:
    if role == "profile":
        return {"features": FEATURES, **extra}
    return {"prompt": "a red fox in a snowy forest, golden hour", **extra}


@pytest.fixture(scope="module")
def workers(tiny_models: dict[str, Path]) -> Iterator[dict[str, ServiceProcess]]:
    env = image_env(tiny_models["zimage"])
    procs = {role: ServiceProcess(f"services.{role}_worker.main", env=env) for role in ROLES}
    with all_running(procs.values()):
        yield procs


@pytest.mark.parametrize("role", list(ROLES))
def test_role_route_returns_png_of_asked_size(workers: dict[str, ServiceProcess], role: str) -> None:
    resp = httpx.post(
        workers[role].url + ROLES[role],
        json=body_for(role, width=96, height=64, seed=7),
        headers=AUTH,
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    img = decode(body["image_base64"])
    assert img.format == "PNG"
    assert img.size == (96, 64)
    assert body["seed"] == 7
    assert body["role"] == role
    assert body["prompt_tokens"] > 0
    assert body["prompt_truncated"] is False
    assert resp.headers["X-Request-ID"]
    # A random-weight model still makes an image with content, not a blank placeholder.
    assert np.asarray(img).std() > 1.0


def test_profile_prompt_carries_features(workers: dict[str, ServiceProcess]) -> None:
    resp = httpx.post(
        workers["profile"].url + ROLES["profile"], json=body_for("profile"), headers=AUTH, timeout=60
    )
    assert resp.status_code == 200, resp.text
    # The wording is tested in test_persona.py; here only that the worker's avatar prompt carries it whole.
    descriptor = describe_persona(Features(**FEATURES))
    assert descriptor and f", {descriptor}" in resp.json()["prompt_used"]


@pytest.mark.parametrize("role", list(ROLES))
def test_every_role_serves_generic_route(workers: dict[str, ServiceProcess], role: str) -> None:
    resp = httpx.post(
        workers[role].url + "/v1/generate", json={"prompt": "a lighthouse"}, headers=AUTH, timeout=60
    )
    assert resp.status_code == 200, resp.text
    assert decode(resp.json()["image_base64"]).size == (64, 64)


def test_same_seed_same_bytes_other_seed_differs(workers: dict[str, ServiceProcess]) -> None:
    url = workers["chat1to1"].url + ROLES["chat1to1"]
    first, second, other = (
        httpx.post(url, json=body_for("chat1to1", seed=seed), headers=AUTH, timeout=60).json()["image_base64"]
        for seed in (1234, 1234, 4321)
    )
    assert first == second
    assert first != other


def test_missing_seed_gets_one_and_reports_it(workers: dict[str, ServiceProcess]) -> None:
    url = workers["scenes"].url + ROLES["scenes"]
    a = httpx.post(url, json=body_for("scenes"), headers=AUTH, timeout=60).json()
    b = httpx.post(url, json=body_for("scenes", seed=a["seed"]), headers=AUTH, timeout=60).json()
    assert isinstance(a["seed"], int)
    assert a["image_base64"] == b["image_base64"]


def test_output_formats(workers: dict[str, ServiceProcess]) -> None:
    url = workers["shorts"].url + ROLES["shorts"]
    for fmt, pil_name in (("jpeg", "JPEG"), ("webp", "WEBP")):
        resp = httpx.post(url, json=body_for("shorts", output_format=fmt), headers=AUTH, timeout=60)
        assert decode(resp.json()["image_base64"]).format == pil_name


def test_concurrent_requests_keep_their_own_seed(workers: dict[str, ServiceProcess]) -> None:
    """Concurrent calls (batched together) must each get the image of their own seed, not a neighbour's."""
    url = workers["shorts"].url + ROLES["shorts"]
    seeds = [11, 22, 33, 44, 55]

    async def burst() -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(url, json=body_for("shorts", seed=s), headers=AUTH) for s in seeds]
            return [r.json() for r in await asyncio.gather(*calls)]

    together = asyncio.run(burst())
    alone = [httpx.post(url, json=body_for("shorts", seed=s), headers=AUTH, timeout=60).json() for s in seeds]
    for t, a in zip(together, alone, strict=True):
        assert t["seed"] == a["seed"]
        diff = np.abs(
            np.asarray(decode(t["image_base64"]), float) - np.asarray(decode(a["image_base64"]), float)
        )
        # Batched and single calls may differ by float rounding only, never by a whole different image.
        assert diff.mean() < 2.0
    distinct = {t["image_base64"] for t in together}
    assert len(distinct) == len(seeds)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"prompt": "x", "width": 65}, "multiple of 16"),
        ({"prompt": "x", "width": 1024}, "over the limit"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 51}, "steps"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "sed": 1}, "sed"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"width": 64}, "prompt"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "guidance_scale": 20.5}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        # The interface applies styles; a worker takes the final prompt only.
        ({"prompt": "x", "style": "anime"}, "style"),
    ],
)
def test_bad_input_is_a_clear_422(
    workers: dict[str, ServiceProcess], payload: dict[str, object], fragment: str
) -> None:
    resp = httpx.post(workers["chat1to1"].url + "/v1/generate", json=payload, headers=AUTH, timeout=30)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "validation_error"
    assert fragment in body["detail"]


@pytest.mark.parametrize("role", ["chat1to1", "profile"])
def test_n_images_in_one_call_with_following_seeds(workers: dict[str, ServiceProcess], role: str) -> None:
    resp = httpx.post(
        workers[role].url + ROLES[role],
        json=body_for(role, seed=70, n=3, steps=3, guidance_scale=1.5),
        headers=AUTH,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    images = [{"image_base64": body["image_base64"], "seed": body["seed"]}, *body["more_images"]]
    assert [image["seed"] for image in images] == [70, 71, 72]
    assert len({image["image_base64"] for image in images}) == 3
    # One pipeline call made the three (nothing else was in flight on this worker).
    assert body["timings_ms"]["batch_size"] == 3
    assert (body["steps"], body["guidance_scale"]) == (3, 1.5)
    # The second image is the one its own seed makes alone.
    alone = httpx.post(
        workers[role].url + ROLES[role],
        json=body_for(role, seed=71, steps=3, guidance_scale=1.5),
        headers=AUTH,
        timeout=60,
    ).json()
    second = np.asarray(decode(images[1]["image_base64"]), float)
    assert np.abs(second - np.asarray(decode(alone["image_base64"]), float)).mean() < 2.0


def test_negative_prompt_is_used_with_guidance_and_hard_blocked(workers: dict[str, ServiceProcess]) -> None:
    url = workers["chat1to1"].url + ROLES["chat1to1"]
    guided = httpx.post(
        url, json=body_for("chat1to1", guidance_scale=2.0, negative_prompt="blurry"), headers=AUTH, timeout=60
    ).json()
    assert guided["negative_prompt"] == "blurry"
    # At guidance 0 the pipeline ignores it: the response says none was used.
    unguided = httpx.post(
        url, json=body_for("chat1to1", negative_prompt="blurry"), headers=AUTH, timeout=60
    ).json()
    assert (unguided["guidance_scale"], unguided["negative_prompt"]) == (0.0, None)
    blocked = httpx.post(
        url, json=body_for("chat1to1", negative_prompt="a naked 12 year old"), headers=AUTH, timeout=60
    )
    assert blocked.status_code == 422
    assert blocked.json()["code"] == "policy_blocked"


def test_not_json_is_422(workers: dict[str, ServiceProcess]) -> None:
    resp = httpx.post(
        workers["chat1to1"].url + "/v1/generate",
        content=b"not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status_code == 422
    assert resp.json()["detail"]


def test_oversized_body_is_413(workers: dict[str, ServiceProcess]) -> None:
    # Past the image workers' JSON limit (6 MiB by default: room for a base64 start image).
    resp = httpx.post(
        workers["chat1to1"].url + "/v1/generate",
        content=b'{"prompt": "' + b"x" * (7 * 1024 * 1024) + b'"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["code"] == "payload_too_large"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_token_required_except_healthz(workers: dict[str, ServiceProcess], headers: dict[str, str]) -> None:
    base = workers["profile"].url
    resp = httpx.post(base + ROLES["profile"], json=body_for("profile"), headers=headers)
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthorized"
    assert httpx.get(base + "/metrics", headers=headers).status_code == 401
    assert httpx.get(base + "/healthz").status_code == 200


def test_healthz_and_metrics(workers: dict[str, ServiceProcess], tiny_models: dict[str, Path]) -> None:
    resp = httpx.get(workers["scenes"].url + "/healthz")
    health = resp.json()
    assert health["status"] == "ok"
    # Unauthenticated: the model's public name, never the server path it was loaded from.
    assert health["model"] == tiny_models["zimage"].name
    assert str(tiny_models["zimage"].parent) not in resp.text
    assert "output_safety" not in health
    assert health["limits"] == {
        "max_side": 512,
        "max_pixels": 2048 * 2048,
        "max_steps": 50,
        "max_guidance": 20.0,
        "max_n": 4,
        # Image to image: the strengths a request may ask for.
        "min_strength": 0.1,
        "max_strength": 1.0,
    }
    assert (health["device"], health["dtype"], health["role"]) == ("cpu", "float32", "scenes")
    metrics = httpx.get(workers["scenes"].url + "/metrics", headers=AUTH).text
    assert "imgpod_model_inference_seconds" in metrics
    assert "imgpod_http_requests_total" in metrics


def test_moderated_roles_check_their_output(workers: dict[str, ServiceProcess]) -> None:
    for role, checked in (("shorts", True), ("scenes", True), ("chat1to1", False), ("profile", False)):
        resp = httpx.post(workers[role].url + ROLES[role], json=body_for(role), headers=AUTH, timeout=60)
        assert resp.json()["safety_checked"] is checked, role
        assert resp.json()["model"] == "z-image-turbo-tiny"


def test_general_route_gets_the_same_checks_on_every_worker(workers: dict[str, ServiceProcess]) -> None:
    """The general pool rotates over all image workers: the route's role decides, not the worker's."""
    for role in ROLES:
        body = httpx.post(
            workers[role].url + "/v1/generate",
            json={"prompt": "a nude woman on a beach"},
            headers=AUTH,
            timeout=60,
        ).json()
        assert body["safety_checked"] is True, role
        assert body["soft_blocked"] is True, role
        assert "no nudity" in body["prompt_used"], role


def test_moderated_route_soft_blocks_and_hard_blocks(workers: dict[str, ServiceProcess]) -> None:
    url = workers["shorts"].url + ROLES["shorts"]
    soft = httpx.post(url, json={"prompt": "a nude woman on a beach"}, headers=AUTH, timeout=60).json()
    assert soft["soft_blocked"] is True
    assert soft["prompt_used"].startswith("a nude woman on a beach")
    assert "no nudity" in soft["prompt_used"]
    # The unmoderated 1:1 role keeps an adult prompt as it is, but no role draws a hard-blocked one.
    plain = httpx.post(
        workers["chat1to1"].url + ROLES["chat1to1"], json={"prompt": "a nude woman on a beach"}, headers=AUTH
    ).json()
    assert plain["soft_blocked"] is False
    assert plain["prompt_used"] == "a nude woman on a beach"
    for role in ROLES:
        if role == "profile":
            continue
        blocked = httpx.post(
            workers[role].url + ROLES[role], json={"prompt": "a naked 12 year old"}, headers=AUTH, timeout=60
        )
        assert blocked.status_code == 422, role
        assert blocked.json()["code"] == "policy_blocked"


def test_wrong_role_route_is_404(workers: dict[str, ServiceProcess]) -> None:
    resp = httpx.post(workers["shorts"].url + ROLES["scenes"], json=body_for("scenes"), headers=AUTH)
    assert resp.status_code == 404


def test_missing_model_fails_visibly(tmp_path: Path) -> None:
    env = image_env(tmp_path / "no-such-model")
    with ServiceProcess("services.chat1to1_worker.main", env=env, expect_status=503) as proc:
        health = health_after_loading(proc.url)
        assert health["status"] == "error"
        assert health["detail"] == "the image model's files were not found on this worker"
        # The public name is the directory's last component; the server path never shows.
        assert str(tmp_path) not in json.dumps(health)
        resp = httpx.post(proc.url + ROLES["chat1to1"], json=body_for("chat1to1"), headers=AUTH)
        assert resp.status_code == 503
        body = resp.json()
        assert body["code"] == "model_unavailable"
        assert "not found" in body["detail"]
        assert str(tmp_path) not in resp.text and body["request_id"] == resp.headers["X-Request-ID"]
        # The operator still finds the cause: the path and the reason are in the worker's log.
        assert str(tmp_path / "no-such-model") in proc.logs() and "does not exist" in proc.logs()
        assert "image_base64" not in body


def test_gpu_settings_over_http(tiny_models: dict[str, Path]) -> None:
    """Warm-up sizes, an attention backend, VAE tiling and the batch table, set as an operator would."""
    env = image_env(
        tiny_models["zimage"],
        IMAGE_WARMUP_SIZES="96x96",
        IMAGE_ATTENTION_BACKEND="native",
        IMAGE_VAE_TILING_ABOVE="64",
        IMAGE_MAX_BATCH_BY_PIXELS='{"4096": 4, "16384": 1}',
    )
    with ServiceProcess("services.chat1to1_worker.main", env=env) as proc:
        health = httpx.get(proc.url + "/healthz").json()
        assert health["status"] == "ok"
        assert health["max_batch_by_pixels"] == {"4096": 4, "16384": 1}
        resp = httpx.post(
            proc.url + ROLES["chat1to1"],
            json=body_for("chat1to1", width=128, height=128),
            headers=AUTH,
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        assert decode(resp.json()["image_base64"]).size == (128, 128)


def test_unknown_attention_backend_stops_the_worker_with_the_choices(tiny_models: dict[str, Path]) -> None:
    env = image_env(tiny_models["zimage"], IMAGE_ATTENTION_BACKEND="turbo-attn")
    proc = ServiceProcess("services.chat1to1_worker.main", env=env)
    with pytest.raises(RuntimeError, match="exited with"):
        proc.start()
    proc.stop()
    assert "unknown attention backend 'turbo-attn'" in proc.logs()
    assert "native" in proc.logs()


def test_truncated_model_file_is_a_health_error(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = Path(shutil.copytree(tiny_models["zimage"], tmp_path / "zimage"))
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 1000)
    with ServiceProcess("services.chat1to1_worker.main", env=image_env(model), expect_status=503) as proc:
        health = health_after_loading(proc.url)
        assert health["status"] == "error"
        assert health["detail"] == (
            "the image model's files on this worker are incomplete or truncated; fetch them again"
        )
        assert str(tmp_path) not in json.dumps(health)
        assert "vae/diffusion_pytorch_model.safetensors is truncated" in proc.logs()
