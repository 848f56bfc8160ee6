"""The selfie feature worker over HTTP: real uvicorn process, real detector, tiny Qwen2-VL, real photos."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data

from devtools import stack_env
from devtools.photos import astronaut, encode
from devtools.service_process import ServiceProcess
from tests.helpers.photos import (
    ASTRONAUT_FACE,
    blurred,
    darkened,
    exif_rotated_jpeg,
    gif,
    huge_png_header,
    iou,
    truncated_jpeg,
    two_people,
)
from tests.helpers.waiting import health_after_loading

pytestmark = pytest.mark.integration

MODULE = "services.selfie_feature_worker.main"
TOKEN = "selfie-test-token-5e1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANALYZE = "/v1/profile/analyze"
TIMEOUT_S = 60.0


FALLBACK_WARNING = "falling back to nudenet's detector"


def worker_env(tiny_models: dict[str, Path], tmp_path: Path, **extra: str) -> dict[str, str]:
    return stack_env.selfie_env(tiny_models, TOKEN, tmp_path, **extra)


def missing_weights(tmp_path: Path) -> str:
    """A YOLOv8-face path the deploy step never filled: the pretrained faces come from nudenet's fallback."""
    return str(tmp_path / "models" / "yolov8n-face-lindevs.pt")


@pytest.fixture(scope="module")
def worker(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp("selfie")
    env = worker_env(tiny_models, tmp, SELFIE_DETECTOR_WEIGHTS=missing_weights(tmp))
    with ServiceProcess(MODULE, env=env, log_dir=tmp) as svc:
        yield svc


def analyze(
    svc: ServiceProcess, payload: bytes, name: str = "selfie.png", mime: str = "image/png"
) -> httpx.Response:
    return httpx.post(
        f"{svc.url}{ANALYZE}", files={"file": (name, payload, mime)}, headers=AUTH, timeout=TIMEOUT_S
    )


def box_of(body: dict) -> tuple[int, int, int, int]:
    box = body["face"]["box"]
    return box["x"], box["y"], box["w"], box["h"]


@pytest.fixture(scope="module")
def astronaut_result(worker: ServiceProcess) -> dict:
    resp = analyze(worker, encode(astronaut()))
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_no_paths(text: str, model_dir: Path) -> None:
    """Unauthenticated health and response bodies name models; they never say where they lie on disk."""
    assert str(model_dir) not in text and str(model_dir.parent) not in text
    assert "/tmp" not in text


def test_healthz_names_models(worker: ServiceProcess, tiny_models: dict[str, Path]) -> None:
    resp = httpx.get(f"{worker.url}/healthz", timeout=5)
    body = resp.json()
    assert body["status"] == "ok"
    assert body["detector"] == "nudenet-fallback"
    assert body["detector_weights"] == "320n.onnx"
    # The tiny model's id is a local path: only its last component is public.
    assert body["model"] == tiny_models["qwen_vl"].name == "qwen2-vl-tiny"
    assert (body["device"], body["dtype"]) == ("cpu", "float32")
    assert body["concurrency"] == 2
    assert_no_paths(resp.text, tiny_models["qwen_vl"])


def test_requires_internal_token(worker: ServiceProcess) -> None:
    resp = httpx.post(f"{worker.url}{ANALYZE}", files={"file": ("a.png", encode(astronaut()))}, timeout=10)
    assert resp.status_code == 401


def test_astronaut_face_found(astronaut_result: dict, tiny_models: dict[str, Path]) -> None:
    face = astronaut_result["face"]
    assert face["detected"] is True
    assert face["face_count"] == 1
    assert iou(box_of(astronaut_result), ASTRONAUT_FACE) > 0.5
    assert 0.5 < face["confidence"] <= 1.0
    assert 0.0 < face["quality_score"] <= 1.0
    signals = face["signals"]
    assert 0.1 < signals["face_size_ratio"] < 0.4
    assert all(signals[k] is not None for k in ("sharpness", "exposure_mean", "clipped_fraction"))
    assert face["detector"] == "nudenet-fallback"
    assert astronaut_result["model"] == {"detector": "nudenet-fallback:320n.onnx", "vlm": "qwen2-vl-tiny"}
    assert_no_paths(json.dumps(astronaut_result), tiny_models["qwen_vl"])
    assert set(astronaut_result["timings_ms"]) == {"decode", "detect", "quality", "vlm"}


def test_fallback_is_warned_once_at_start_up(worker: ServiceProcess, astronaut_result: dict) -> None:
    analyze(worker, encode(astronaut()))
    warnings = [
        json.loads(line)
        for line in worker.logs().splitlines()
        if FALLBACK_WARNING in line and line.startswith("{")
    ]
    assert len(warnings) == 1, warnings  # at start-up, not per request
    [warning] = warnings
    assert warning["level"] == "warning"
    assert (warning["detector"], warning["reason"]) == ("nudenet-fallback", "weights not found")


def test_random_vlm_answer_leaves_features_empty(worker: ServiceProcess, astronaut_result: dict) -> None:
    # The tiny VLM has random weights: its answer is junk, and nothing may be invented from it.
    assert astronaut_result["features_parsed"] is False
    features = astronaut_result["features"]
    assert all(v is None for k, v in features.items() if k != "accessories")
    assert features["accessories"] == []
    metrics = httpx.get(f"{worker.url}/metrics", headers=AUTH, timeout=5).text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("imgpod_vlm_unparsed_total"))
    assert float(line.split()[-1]) >= 1


def test_several_faces_uses_the_largest(worker: ServiceProcess) -> None:
    body = analyze(worker, encode(two_people())).json()
    assert body["face"]["face_count"] == 2
    # The full-size astronaut on the left is the subject, not the smaller copy on the right.
    assert iou(box_of(body), ASTRONAUT_FACE) > 0.5


@pytest.mark.parametrize("photo", ["coffee", "rocket", "chelsea"])
def test_photo_without_person_scores_lower(
    worker: ServiceProcess, astronaut_result: dict, photo: str
) -> None:
    resp = analyze(worker, encode(getattr(data, photo)()))
    assert resp.status_code == 200, resp.text
    face = resp.json()["face"]
    assert face["detected"] is False
    assert face["box"] is None and face["face_count"] == 0
    assert face["quality_score"] < astronaut_result["face"]["quality_score"] - 0.2


def test_blurred_copy_scores_lower(worker: ServiceProcess, astronaut_result: dict) -> None:
    body = analyze(worker, encode(blurred(astronaut()))).json()
    original = astronaut_result["face"]
    assert body["face"]["signals"]["sharpness"] < original["signals"]["sharpness"]
    assert body["face"]["quality_score"] < original["quality_score"]


def test_darkened_copy_scores_lower(worker: ServiceProcess, astronaut_result: dict) -> None:
    body = analyze(worker, encode(darkened(astronaut()))).json()
    original = astronaut_result["face"]
    assert body["face"]["signals"]["exposure_mean"] < original["signals"]["exposure_mean"] / 2
    assert body["face"]["quality_score"] < original["quality_score"]


def test_exif_rotated_jpeg_still_finds_face(worker: ServiceProcess) -> None:
    resp = analyze(worker, exif_rotated_jpeg(astronaut()), "phone.jpg", "image/jpeg")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["face"]["detected"] is True
    # EXIF applied: the box is where the face is in the upright photo.
    assert iou(box_of(body), ASTRONAUT_FACE) > 0.5


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_upload_answers_in_its_own_pixels(
    worker: ServiceProcess, astronaut_result: dict, fmt: str
) -> None:
    """3000 px is over decode_max_side (2048): analysed on a smaller copy, answered in the upload's pixels."""
    side = 3000
    upload = encode(astronaut().resize((side, side), Image.Resampling.LANCZOS), fmt, quality=92)
    resp = analyze(worker, upload, f"big.{fmt.lower()}", f"image/{fmt.lower()}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    scale = side / 512
    native = tuple(round(v * scale) for v in box_of(astronaut_result))
    assert iou(box_of(body), native) > 0.8  # type: ignore[arg-type]
    x, y, w, h = box_of(body)
    assert iou((round(x / scale), round(y / scale), round(w / scale), round(h / scale)), ASTRONAUT_FACE) > 0.5
    native_ratio = astronaut_result["face"]["signals"]["face_size_ratio"]
    assert body["face"]["signals"]["face_size_ratio"] == pytest.approx(native_ratio, abs=0.03)
    metrics = httpx.get(f"{worker.url}/metrics", headers=AUTH, timeout=5).text
    # The decode's pixels were given back to the budget when it ended.
    assert "imgpod_decode_pixels_in_use 0.0" in metrics.splitlines()


@pytest.mark.parametrize(
    ("payload", "name", "status"),
    [
        (b"this is a text file, not a photo\n" * 10, "selfie.jpg", 415),
        (None, "truncated.jpg", 422),
        (None, "bomb.png", 413),
        (b"", "empty.jpg", 422),
        (None, "anim.gif", 415),
    ],
    ids=["text-as-jpg", "truncated-jpeg", "20000x20000-png", "empty", "gif"],
)
def test_bad_upload_is_a_clear_4xx(
    worker: ServiceProcess, payload: bytes | None, name: str, status: int
) -> None:
    if payload is None:
        payload = {"truncated.jpg": truncated_jpeg, "bomb.png": huge_png_header, "anim.gif": gif}[name]()
    resp = analyze(worker, payload, name, "image/jpeg")
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["detail"] and body["code"]
    # The worker keeps serving after bad input.
    assert analyze(worker, encode(astronaut(), "JPEG")).status_code == 200


def test_missing_file_field_is_422(worker: ServiceProcess) -> None:
    resp = httpx.post(f"{worker.url}{ANALYZE}", data={"other": "x"}, headers=AUTH, timeout=10)
    assert resp.status_code == 422
    assert "file" in resp.json()["detail"]


def test_random_yolov8n_pt_finds_nothing_without_crashing(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The production .pt path on a yolov8n.yaml model with no trained weights: no face, no error.

    SELFIE_FACE_CLASSES is unset: every class is kept because the YOLOv8-face model is the one that loaded.
    """
    tmp = tmp_path_factory.mktemp("selfie-pt")
    env = worker_env(tiny_models, tmp, SELFIE_DETECTOR_WEIGHTS=str(tiny_models["yolo_random"]))
    with ServiceProcess(MODULE, env=env, log_dir=tmp) as svc:
        health = httpx.get(f"{svc.url}/healthz", timeout=5).json()
        assert (health["detector"], health["detector_weights"]) == ("yolov8-face", "yolov8n-random.pt")
        resp = analyze(svc, encode(astronaut()))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["face"]["detected"] is False
        assert body["face"]["detector"] == "yolov8-face"
        assert body["model"]["detector"] == "yolov8-face:yolov8n-random.pt"
        assert FALLBACK_WARNING not in svc.logs()


def test_missing_weights_without_fallback_fail_start_up_clearly(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("selfie-no-fallback")
    env = worker_env(
        tiny_models, tmp, SELFIE_DETECTOR_WEIGHTS=missing_weights(tmp), SELFIE_DETECTOR_FALLBACK="false"
    )
    with ServiceProcess(MODULE, env=env, log_dir=tmp, expect_status=503) as svc:
        body = health_after_loading(svc.url)
        assert body["status"] == "error"
        assert "DetectorUnavailable" in body["detail"] and str(tmp) not in body["detail"]
        resp = analyze(svc, encode(astronaut()))
        assert resp.status_code == 503
        assert resp.json()["code"] == "model_unavailable"
        logs = svc.logs()
        assert "SELFIE_DETECTOR_FALLBACK is off" in logs and FALLBACK_WARNING not in logs


def test_model_load_failure_keeps_process_up(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("selfie-broken")
    env = worker_env(tiny_models, tmp, SELFIE_VLM_MODEL=str(tmp / "no-such-model"))
    with ServiceProcess(MODULE, env=env, log_dir=tmp, expect_status=503) as svc:
        body = health_after_loading(svc.url)
        assert body["status"] == "error" and body["detail"]
        resp = analyze(svc, encode(astronaut()))
        assert resp.status_code == 503
        assert resp.json()["code"] == "model_unavailable"
        # A short public reason; the library's message (which names the missing path) is in the log only.
        health = httpx.get(f"{svc.url}/healthz", timeout=5)
        for text in (health.text, resp.text):
            assert "no-such-model" not in text and str(tmp) not in text and "/tmp" not in text
        assert "no-such-model" in svc.logs()
