"""The OpenAI images parts that need no server: the signed output store, size parsing, the error shape."""

from __future__ import annotations

import pytest

from services.interface.openai_images.models import parse_size
from services.interface.openai_images.output_store import OutputStore
from shared.errors import ErrorReply, ErrorShapes, Overloaded, PolicyBlocked, openai_shape


def _query(path: str) -> tuple[str, int, str]:
    file_id, query = path.rsplit("/", 1)[1].split("?")
    params = dict(part.split("=") for part in query.split("&"))
    return file_id, int(params["expires"]), params["sig"]


def test_store_serves_a_signed_path_until_it_expires() -> None:
    store = OutputStore(ttl_s=10, max_items=4, max_bytes=1024)
    file_id, expires, sig = _query(store.put(b"png", "image/png", now=100.0))
    assert expires == 110
    stored = store.get(file_id, expires, sig, now=105.0)
    assert stored is not None and stored.data == b"png"
    assert store.get(file_id, expires, sig, now=111.0) is None
    assert store.get(file_id, expires + 100, sig, now=105.0) is None  # a longer expiry is not signed
    tampered = ("1" if sig[0] == "0" else "0") + sig[1:]  # always a different signature, whatever the key
    assert store.get(file_id, expires, tampered, now=105.0) is None


def test_store_is_bounded_by_count_and_bytes_oldest_first() -> None:
    store = OutputStore(ttl_s=60, max_items=2, max_bytes=10)
    first = _query(store.put(b"aaaa", "image/png", now=0))
    second = _query(store.put(b"bbbb", "image/png", now=1))
    third = _query(store.put(b"cccccc", "image/png", now=2))  # 14 bytes with both: the oldest goes
    assert store.get(*first, now=3) is None
    assert store.get(*second, now=3) is not None and store.get(*third, now=3) is not None
    assert len(store) == 2


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
