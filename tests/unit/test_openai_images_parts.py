"""The OpenAI images parts that need no server: signed output URLs, size parsing, the error shape."""

from __future__ import annotations

import pytest

from services.interface.openai_images.models import parse_size
from services.interface.openai_images.output_urls import FILES_PATH, OutputUrls, url_key
from services.interface.settings import InterfaceSettings
from shared.errors import ErrorReply, ErrorShapes, Overloaded, PolicyBlocked, openai_shape


def _query(path: str) -> tuple[str, int, int, str]:
    route, query = path.split("?")
    job_id, index = route.removeprefix(FILES_PATH + "/").split("/")
    params = dict(part.split("=") for part in query.split("&"))
    return job_id, int(index), int(params["expires"]), params["sig"]


def test_url_is_signed_for_its_job_image_and_expiry() -> None:
    urls = OutputUrls(url_key("a-secret", None))
    job_id, index, expires, sig = _query(urls.path("job_" + "ab" * 12, 1, 110))
    assert (job_id, index, expires) == ("job_" + "ab" * 12, 1, 110)
    assert urls.valid(job_id, index, expires, sig, now=105.0)
    assert not urls.valid(job_id, index, expires, sig, now=111.0)
    assert not urls.valid(job_id, index, expires + 100, sig, now=105.0)  # a longer expiry is not signed
    assert not urls.valid(job_id, 0, expires, sig, now=105.0)  # another image of the job
    assert not urls.valid("job_" + "cd" * 12, index, expires, sig, now=105.0)
    tampered = ("1" if sig[0] == "0" else "0") + sig[1:]  # always a different signature, whatever the key
    assert not urls.valid(job_id, index, expires, tampered, now=105.0)


def test_url_key_is_shared_by_replicas_that_share_a_secret_or_token() -> None:
    # Replicas on one Redis serve each other's URLs: the same settings must give the same key.
    assert url_key("s", None) == url_key("s", "token") == b"s"
    assert url_key(None, "token") == url_key(None, "token") != b"token"
    assert url_key(None, None) != url_key(None, None)  # random per process: a lone interface only


def test_replicas_on_redis_need_a_shared_url_key() -> None:
    with pytest.raises(ValueError, match="openai_url_secret or internal_token"):
        InterfaceSettings(jobs_redis_url="redis://127.0.0.1:6379/0")
    InterfaceSettings(jobs_redis_url="redis://127.0.0.1:6379/0", internal_token="a-real-token-123")


@pytest.mark.parametrize(
    ("size", "expected"), [(None, None), ("auto", None), ("512x768", (512, 768)), ("16x2048", (16, 2048))]
)
def test_sizes(size: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["512", "512x", "100x100", "4096x512", "0x0", "512X512", " 512x512"])
def test_bad_sizes(size: str) -> None:
    with pytest.raises(ValueError):
        parse_size(size)


def test_openai_shape_maps_status_and_codes() -> None:
    status, body = openai_shape(ErrorReply.of(PolicyBlocked("not allowed", stage="policy")))
    assert status == 400
    assert body == {
        "error": {
            "message": "not allowed",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        }
    }
    full = ErrorReply.of(Overloaded("full", retry_after_s=2.2))
    assert openai_shape(full)[1]["error"]["code"] == "rate_limit_exceeded"
    assert full.headers == {"Retry-After": "3"}
    assert openai_shape(ErrorReply(503, "down", "no_healthy_worker"))[1]["error"]["type"] == "server_error"


def test_shapes_choose_by_prefix_and_keep_native_elsewhere() -> None:
    shapes = ErrorShapes([("/v1/images/", openai_shape)])
    reply = ErrorReply(422, "bad", "validation_error", param="size")
    status, body = shapes.render("/v1/images/generations", reply, "rid")
    assert status == 400 and b'"param":"size"' in body and b"rid" not in body
    status, body = shapes.render("/v1/imagegen", reply, "rid")
    assert status == 422 and body == b'{"detail":"bad","code":"validation_error","request_id":"rid"}'
