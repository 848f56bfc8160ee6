"""Personas through the running interface: the client's session, curl-like, in front of the real services
(tiny LLM, selfie worker, profile and chat1to1 image workers on the tiny Z-Image), each its own process.

Made from features (JSON) or from a selfie (multipart, through the profile job), read, listed, changed, an
avatar picked and fetched, used by id in a chat image and a reply, hidden from another key, deleted.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from devtools import stack_env
from devtools.photos import astronaut, encode
from devtools.service_process import ServiceProcess, all_running
from devtools.stack_env import PERSONA
from tests.helpers.waiting import wait_until
from tests.integration.test_image_workers import image_env

pytestmark = pytest.mark.integration

TOKEN = "test-internal-token"
KEY_A, KEY_B = "personas-key-a", "personas-key-b"
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}
CHAT = "/v1/chat/1to1/imagegen"
REPLY = "/v1/chat/1to1/reply"
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def api(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("personas")
    procs = {
        "llm": ServiceProcess("services.llm_service.main", env=stack_env.llm_env(tiny_models, TOKEN)),
        "selfie": ServiceProcess(
            "services.selfie_feature_worker.main", env=stack_env.selfie_env(tiny_models, TOKEN, tmp)
        ),
    }
    for role in ("profile", "chat1to1"):
        env = image_env(tiny_models["zimage"], IMAGE_INTERNAL_TOKEN=TOKEN)
        procs[role] = ServiceProcess(f"services.{role}_worker.main", env=env)
    with all_running(procs.values()):
        urls = {name: proc.url for name, proc in procs.items()}
        env = stack_env.interface_env(
            {**urls, "shorts": urls["chat1to1"], "scenes": urls["chat1to1"]},
            TOKEN,
            INTERFACE_API_KEYS=f"{KEY_A},{KEY_B}",
            INTERFACE_QUEUE_MAX_SHARE_PER_KEY="1",
        )
        with ServiceProcess("services.interface.main", env=env) as proc:
            yield proc


def call(
    api: ServiceProcess, method: str, path: str, headers: dict[str, str] = A, **kw: Any
) -> httpx.Response:
    return httpx.request(method, api.url + path, headers=headers, timeout=180, **kw)


def selfie() -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("astronaut.jpg", encode(astronaut(), "JPEG"), "image/jpeg")}


def finished(api: ServiceProcess, job_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(call(api, "GET", f"/v1/jobs/{job_id}").json())
        return seen["status"] not in ("queued", "running")

    wait_until(done, timeout_s=120, what=f"job {job_id} finished")
    return seen


def png_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_a_client_session_with_personas(api: ServiceProcess) -> None:
    # From features: no avatar yet.
    made = call(
        api,
        "POST",
        "/v1/personas",
        json={"name": "Ada", "features": PERSONA, "personality": "dry wit", "speaking_style": "short"},
    )
    assert made.status_code == 201, made.text
    ada = made.json()
    assert ada["id"].startswith("per_") and made.headers["Location"] == f"/v1/personas/{ada['id']}"
    assert ada["name"] == "Ada" and ada["personality"] == "dry wit" and ada["speaking_style"] == "short"
    assert {k: v for k, v in ada["features"].items() if k in PERSONA} == PERSONA
    assert ada["avatars"] == [] and ada["avatar_url"] is None
    assert ada["created_at"] == ada["updated_at"]

    # From a selfie: the profile job's features and avatars, the first one approved.
    made = call(api, "POST", "/v1/personas", files=selfie(), data={"seed": "42", "n": "2", "name": "Astro"})
    assert made.status_code == 201, made.text
    astro = made.json()
    assert astro["name"] == "Astro"
    assert astro["avatars"] == [{"index": 0, "approved": True}, {"index": 1, "approved": False}]
    assert astro["avatar_url"] == f"/v1/personas/{astro['id']}/avatars/0"
    # The tiny VLM answers junk: the features are all null, as the profile route says.
    assert all(v in (None, []) for v in astro["features"].values())
    # The avatars are the profile route's images for the same selfie and seed, byte for byte.
    profile = call(api, "POST", "/v1/profile/create", files=selfie(), data={"seed": "42", "n": "2"})
    assert profile.status_code == 200, profile.text
    images = [profile.json()["profile_image_base64"], profile.json()["more_images"][0]["image_base64"]]
    for index, image in enumerate(images):
        avatar = call(api, "GET", f"/v1/personas/{astro['id']}/avatars/{index}")
        assert avatar.status_code == 200 and avatar.headers["content-type"] == "image/png"
        assert png_of(avatar.content).size == (64, 64)
        assert avatar.content == base64.b64decode(image)

    # Read and list: the key's own, newest first, in pages.
    assert call(api, "GET", f"/v1/personas/{ada['id']}").json() == ada
    listed = call(api, "GET", "/v1/personas", params={"limit": 1}).json()
    assert [p["id"] for p in listed["data"]] == [astro["id"]] and listed["next_cursor"]
    rest = call(api, "GET", "/v1/personas", params={"limit": 100, "cursor": listed["next_cursor"]}).json()
    assert ada["id"] in [p["id"] for p in rest["data"]]

    # Change it: the fields sent, null clears, unknown fields and cleared features are 422.
    patched = call(api, "PATCH", f"/v1/personas/{ada['id']}", json={"name": "Ada L.", "personality": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Ada L." and patched.json()["personality"] is None
    assert patched.json()["speaking_style"] == "short" and patched.json()["updated_at"] >= ada["updated_at"]
    for bad in ({"nickname": "x"}, {"features": None}, {"name": "x" * 81}):
        assert call(api, "PATCH", f"/v1/personas/{ada['id']}", json=bad).status_code == 422

    # Pick the other avatar; an index that does not exist is 422.
    picked = call(api, "PUT", f"/v1/personas/{astro['id']}/avatar", json={"index": 1})
    assert picked.status_code == 200, picked.text
    assert picked.json()["avatars"] == [{"index": 0, "approved": False}, {"index": 1, "approved": True}]
    assert picked.json()["avatar_url"] == f"/v1/personas/{astro['id']}/avatars/1"
    assert call(api, "PUT", f"/v1/personas/{astro['id']}/avatar", json={"index": 2}).status_code == 422
    assert call(api, "PUT", f"/v1/personas/{ada['id']}/avatar", json={"index": 0}).status_code == 422
    assert call(api, "GET", f"/v1/personas/{ada['id']}/avatars/0").status_code == 404

    # A chat image by id is the chat image of the same request with the persona inline.
    message = {"message": "send me a picture of you at the beach at sunset", "seed": 5}
    by_id = call(api, "POST", CHAT, json={**message, "persona_id": ada["id"]})
    inline = call(api, "POST", CHAT, json={**message, "persona": PERSONA})
    assert by_id.status_code == 200, by_id.text
    assert inline.status_code == 200, inline.text
    assert by_id.json()["image_base64"] == inline.json()["image_base64"]
    assert by_id.json()["prompt_used"] == inline.json()["prompt_used"]
    assert "auburn" in by_id.json()["prompt_used"]
    # As a job (202): the stored spec keeps the id, resolved when the work is built.
    queued = call(api, "POST", CHAT, json={**message, "persona_id": ada["id"]}, headers={**A, **ASYNC})
    assert queued.status_code == 202, queued.text
    job = finished(api, queued.json()["id"])
    assert job["status"] == "succeeded" and job["result"]["image_base64"] == inline.json()["image_base64"]
    both = {**message, "persona": PERSONA, "persona_id": ada["id"]}
    assert call(api, "POST", CHAT, json=both).status_code == 422

    # The reply: exactly one of persona and persona_id.
    reply = call(api, "POST", REPLY, json={"message": "how was your day?", "persona_id": ada["id"]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["reply"].strip()
    for bad_reply in ({"persona": PERSONA, "persona_id": ada["id"]}, {}):
        assert call(api, "POST", REPLY, json={"message": "hi", **bad_reply}).status_code == 422

    # Another key: 404 on every route, as for an id that never existed.
    for method, path, kw in [
        ("GET", f"/v1/personas/{ada['id']}", {}),
        ("GET", f"/v1/personas/{astro['id']}/avatars/0", {}),
        ("PATCH", f"/v1/personas/{ada['id']}", {"json": {"name": "mine now"}}),
        ("PUT", f"/v1/personas/{astro['id']}/avatar", {"json": {"index": 0}}),
        ("DELETE", f"/v1/personas/{ada['id']}", {}),
        ("POST", CHAT, {"json": {**message, "persona_id": ada["id"]}}),
        ("POST", REPLY, {"json": {"message": "hi", "persona_id": ada["id"]}}),
    ]:
        resp = call(api, method, path, headers=B, **kw)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["code"] == "persona_not_found" and resp.json()["request_id"]
    assert ada["id"] not in [p["id"] for p in call(api, "GET", "/v1/personas", headers=B).json()["data"]]
    assert call(api, "GET", f"/v1/personas/{ada['id']}").json()["name"] == "Ada L."

    # Delete: gone with its avatars.
    assert call(api, "DELETE", f"/v1/personas/{astro['id']}").status_code == 204
    assert call(api, "GET", f"/v1/personas/{astro['id']}").status_code == 404
    assert call(api, "GET", f"/v1/personas/{astro['id']}/avatars/1").status_code == 404
    assert call(api, "DELETE", f"/v1/personas/{astro['id']}").status_code == 404
    assert call(api, "POST", CHAT, json={**message, "persona_id": astro["id"]}).status_code == 404


def test_bad_creates_are_refused_before_any_work(api: ServiceProcess) -> None:
    assert call(api, "POST", "/v1/personas", json={"features": PERSONA, "age": 30}).status_code == 422
    assert call(api, "POST", "/v1/personas", json={"name": "no features"}).status_code == 422
    assert (
        call(
            api, "POST", "/v1/personas", content=b"hello", headers={**A, "content-type": "text/plain"}
        ).status_code
        == 415
    )
    # Multipart without a file, or with a non-image: 422 / the profile route's own refusal.
    assert (
        call(api, "POST", "/v1/personas", data={"name": "x"}, files={"other": ("a", b"b")}).status_code == 422
    )
    not_image = {"file": ("x.jpg", b"not an image at all", "image/jpeg")}
    refused = call(api, "POST", "/v1/personas", files=not_image)
    assert 400 <= refused.status_code < 500
    assert call(api, "POST", "/v1/personas", files=selfie(), data={"n": "99"}).status_code == 422
    assert call(api, "GET", "/v1/personas", params={"limit": 101}).status_code == 422
    assert call(api, "GET", "/v1/personas/per_nothex").status_code == 422
    # A persona's words reach image prompts and replies: the hard block and adults only, when it is made or
    # changed, not first when it is used.
    minor = {**PERSONA, "age_range": "12-14"}
    for body in (
        {"features": minor},
        {"features": PERSONA, "personality": "a shy schoolgirl"},
        {"features": PERSONA, "speaking_style": "sexy schoolgirl undressing"},
    ):
        refused = call(api, "POST", "/v1/personas", json=body)
        assert refused.status_code == 422 and refused.json()["code"] == "policy_blocked", refused.text
    kept = call(api, "POST", "/v1/personas", json={"features": PERSONA}).json()
    changed = call(api, "PATCH", f"/v1/personas/{kept['id']}", json={"personality": "a 15 year old"})
    assert changed.status_code == 422 and changed.json()["code"] == "policy_blocked"


def test_concurrent_creates_for_one_key_all_get_distinct_ids(api: ServiceProcess) -> None:
    def create(i: int) -> httpx.Response:
        return call(api, "POST", "/v1/personas", json={"name": f"twin {i}", "features": PERSONA})

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(create, range(10)))
    assert [r.status_code for r in answers] == [201] * 10
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 10
    listed = {p["id"] for p in call(api, "GET", "/v1/personas", params={"limit": 100}).json()["data"]}
    assert ids <= listed


def test_the_bound_per_key_refuses_before_any_work(tmp_path: Path) -> None:
    """Past INTERFACE_PERSONAS_MAX_PER_KEY a create is 409, a selfie's too, before its profile job (this
    interface has no worker: reaching the job would be 503); another key and a delete make room."""
    env = {"INTERFACE_API_KEYS": f"{KEY_A},{KEY_B}", "INTERFACE_PERSONAS_MAX_PER_KEY": "2"}
    with ServiceProcess("services.interface.main", env=env, log_dir=tmp_path) as small:
        made = [call(small, "POST", "/v1/personas", json={"features": PERSONA}) for _ in range(2)]
        assert [r.status_code for r in made] == [201, 201]
        over = call(small, "POST", "/v1/personas", json={"features": PERSONA})
        assert over.status_code == 409 and over.json()["code"] == "persona_limit_reached"
        assert "2 personas" in over.json()["detail"]
        assert call(small, "POST", "/v1/personas", files=selfie()).status_code == 409
        assert call(small, "POST", "/v1/personas", json={"features": PERSONA}, headers=B).status_code == 201
        assert call(small, "DELETE", f"/v1/personas/{made[0].json()['id']}").status_code == 204
        assert call(small, "POST", "/v1/personas", json={"features": PERSONA}).status_code == 201


def selfie_persona(api: ServiceProcess, name: str, n: int = 2) -> dict[str, Any]:
    made = call(api, "POST", "/v1/personas", files=selfie(), data={"seed": "7", "n": str(n), "name": name})
    assert made.status_code == 201, made.text
    return made.json()


def test_a_personas_chat_image_starts_from_its_approved_avatar(api: ServiceProcess) -> None:
    bea = selfie_persona(api, "Bea")
    message = {"message": "a picture of you reading in a cafe", "seed": 9}
    locked = call(api, "POST", CHAT, json={**message, "persona_id": bea["id"]})
    assert locked.status_code == 200, locked.text
    body = locked.json()
    # The image started from avatar 0 at the chat1to1 workers' default strength (IMAGE_IMG2IMG_STRENGTH).
    assert body["appearance_lock"] == {
        "mode": "img2img",
        "persona_id": bea["id"],
        "avatar_index": 0,
        "strength": 0.6,
    }
    # Its face against the avatar's, from the selfie worker: on the tiny random models, plumbing only.
    identity = body["identity"]
    assert identity is not None and identity["meaningful"] is False, identity
    assert identity["embedder"].startswith("vlm:"), identity
    # A number, or which side had no face the detector found: never "unavailable" (the check was made).
    assert identity["similarity"] is not None or identity["reason"] in (
        "no_face_in_reference",
        "no_face_in_candidate",
    ), identity
    assert "identity" in body["timings_ms"] and "generate" in body["timings_ms"]

    # Text only, per request: no start image, no identity, another image.
    free = call(api, "POST", CHAT, json={**message, "persona_id": bea["id"], "appearance_lock": False})
    assert free.status_code == 200, free.text
    assert free.json()["appearance_lock"] is None and free.json()["identity"] is None
    assert free.json()["image_base64"] != body["image_base64"]

    # The same request again is the same image; another strength, or another approved avatar, another one.
    assert (
        call(api, "POST", CHAT, json={**message, "persona_id": bea["id"]}).json()["image_base64"]
        == (body["image_base64"])
    )
    closer = call(api, "POST", CHAT, json={**message, "persona_id": bea["id"], "strength": 0.3})
    assert closer.status_code == 200, closer.text
    assert closer.json()["appearance_lock"]["strength"] == 0.3
    assert closer.json()["image_base64"] != body["image_base64"]
    assert call(api, "PUT", f"/v1/personas/{bea['id']}/avatar", json={"index": 1}).status_code == 200
    other = call(api, "POST", CHAT, json={**message, "persona_id": bea["id"]})
    assert other.json()["appearance_lock"]["avatar_index"] == 1
    assert other.json()["image_base64"] != body["image_base64"]


def test_strength_is_refused_before_the_queue_where_it_cannot_apply(api: ServiceProcess) -> None:
    bea = selfie_persona(api, "Bea 2", n=1)
    plain = call(api, "POST", "/v1/personas", json={"features": PERSONA}).json()
    message = {"message": "a picture of you at the market"}
    cases = [
        # Below the workers' advertised bound (IMAGE_IMG2IMG_MIN_STRENGTH 0.1).
        {**message, "persona_id": bea["id"], "strength": 0.05},
        # No avatar to start from: a persona without one, the lock off, or no persona at all.
        {**message, "persona_id": plain["id"], "strength": 0.5},
        {**message, "persona_id": bea["id"], "strength": 0.5, "appearance_lock": False},
        {**message, "persona": PERSONA, "strength": 0.5},
    ]
    for body in cases:
        resp = call(api, "POST", CHAT, json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["detail"].startswith("strength")


def test_generated_persona_from_a_brief(api: ServiceProcess) -> None:
    made = call(
        api, "POST", "/v1/personas/generate", json={"brief": "a cheerful barista from Lisbon", "seed": 3}
    )
    assert made.status_code == 201, made.text
    persona = made.json()
    assert made.headers["Location"] == f"/v1/personas/{persona['id']}"
    # The tiny random LLM writes junk: the LLM service's labelled stand-in (LLM_TEMPLATE_FALLBACK on here).
    assert persona["source"] == "template"
    assert 18 <= persona["age"] <= 100 and persona["name"]
    assert persona["avatars"] == [{"index": 0, "approved": True}]
    avatar = call(api, "GET", f"/v1/personas/{persona['id']}/avatars/0")
    assert avatar.status_code == 200 and png_of(avatar.content).size == (64, 64)
    assert call(api, "GET", f"/v1/personas/{persona['id']}").json()["name"] == persona["name"]
    # Usable at once: its chat images start from the avatar it was drawn with.
    chat = call(api, "POST", CHAT, json={"message": "a selfie at work", "persona_id": persona["id"]})
    assert chat.status_code == 200, chat.text
    assert chat.json()["appearance_lock"]["persona_id"] == persona["id"]
    for brief in ("a 16 year old skater", "a shy schoolgirl", "sexy schoolgirl undressing"):
        refused = call(api, "POST", "/v1/personas/generate", json={"brief": brief})
        assert refused.status_code == 422, (brief, refused.text)
        assert refused.json()["code"] == "policy_blocked"
