"""The selfie worker in process, on stand-in models: failures keep their cause in the log and out of the body.

The stand-ins fail on purpose, with messages that name files, the way library errors do; the client must see
a short typed error only, and the log a traceback with the request id (shared/logging_config.py).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.selfie_feature_worker import app as app_module
from services.selfie_feature_worker import pipeline
from services.selfie_feature_worker.detection import DetectedFace
from services.selfie_feature_worker.pipeline import SelfieAnalyzer
from services.selfie_feature_worker.settings import SelfieSettings
from services.selfie_feature_worker.vlm import VlmAnswer
from shared.logging_config import JsonFormatter
from tests.helpers.waiting import wait_until

TOKEN = "selfie-unit-token-3c9d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL_DIR = "/srv/pod-models/qwen2-vl-secret"
SECRET = f"weights missing at {MODEL_DIR}/model.safetensors"


@dataclass
class StandInDetector:
    name: str = "yolo"
    weights: str = "face.onnx"
    fail: bool = False

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        if self.fail:
            raise RuntimeError(SECRET)
        return [DetectedFace(8, 8, 32, 32, 0.9)]


@dataclass
class StandInVlm:
    model_id: str = MODEL_DIR
    device: str = "cpu"
    dtype_name: str = "float32"

    def describe(self, image: Image.Image, max_new_tokens: int | None = None) -> VlmAnswer:
        return VlmAnswer(text='{"hair_color": "brown"}', new_tokens=6)


class JsonCapture(logging.Handler):
    """Formats at emit time, as the service's stderr handler does, so the request id is the live one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.formatter_ = JsonFormatter("selfie_feature_worker")
        self.records: list[tuple[logging.LogRecord, dict]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record, json.loads(self.formatter_.format(record))))


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def detector() -> StandInDetector:
    return StandInDetector()


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, detector: StandInDetector) -> Iterator[TestClient]:
    def load(settings: SelfieSettings) -> SelfieAnalyzer:
        return SelfieAnalyzer(settings, detector, StandInVlm())  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "load_analyzer", load)
    app = app_module.create_app(SelfieSettings(internal_token=TOKEN))
    with TestClient(app) as tc:
        wait_until(lambda: tc.get("/healthz").status_code == 200, what="stand-in models loaded")
        yield tc


@pytest.fixture
def logs() -> Iterator[JsonCapture]:
    # Added after create_app: configure_logging replaces the root handlers (and so pytest's caplog).
    handler = JsonCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def analyze(client: TestClient, request_id: str) -> tuple[int, str, dict]:
    resp = client.post(
        "/v1/profile/analyze",
        files={"file": ("selfie.png", png(), "image/png")},
        headers={**AUTH, "X-Request-ID": request_id},
    )
    return resp.status_code, resp.text, resp.json()


def assert_logged_with_cause(logs: JsonCapture, request_id: str) -> None:
    failures = [(rec, out) for rec, out in logs.records if rec.exc_info and rec.levelno >= logging.ERROR]
    # Exactly once: a second copy of the same traceback only buries the next one.
    assert len(failures) == 1, [out for _, out in logs.records]
    record, out = failures[0]
    assert out["request_id"] == request_id
    # The whole cause is in the log, where the operator needs it.
    assert SECRET in out["exc"] and "Traceback" in out["exc"]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_detector_failure_is_logged_with_traceback_and_answered_briefly(
    client: TestClient, detector: StandInDetector, logs: JsonCapture
) -> None:
    detector.fail = True
    status, text, body = analyze(client, "req-detect-1")
    assert status == 500
    assert (body["detail"], body["code"], body["stage"]) == (
        "face detection failed",
        "inference_failed",
        "detect",
    )
    assert "RuntimeError" not in text and "/srv" not in text and "safetensors" not in text
    assert_logged_with_cause(logs, "req-detect-1")


def test_unexpected_failure_anywhere_in_the_analysis_is_typed_and_logged(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, logs: JsonCapture
) -> None:
    def broken_quality(*_: object, **__: object) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(pipeline, "assess", broken_quality)
    status, text, body = analyze(client, "req-quality-2")
    assert status == 500
    assert body["code"] == "inference_failed" and body["stage"] == "analyze"
    assert body["detail"] and len(body["detail"]) < 80
    assert "RuntimeError" not in text and "/srv" not in text
    assert_logged_with_cause(logs, "req-quality-2")
    # A failure frees its slot: the next request is analysed.
    monkeypatch.undo()
    assert analyze(client, "req-after-3")[0] == 200


def test_healthz_and_bodies_name_models_without_paths(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["model"] == "qwen2-vl-secret"
    assert health.json()["concurrency"] == SelfieSettings().max_concurrent == 2
    status, text, body = analyze(client, "req-ok-4")
    assert status == 200, text
    assert body["model"] == {"detector": "yolo:face.onnx", "vlm": "qwen2-vl-secret"}
    for resp_text in (health.text, text):
        assert MODEL_DIR not in resp_text and "/srv" not in resp_text


def test_failed_load_says_why_without_the_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(settings: SelfieSettings) -> SelfieAnalyzer:
        raise OSError(SECRET)

    monkeypatch.setattr(app_module, "load_analyzer", load)
    app = app_module.create_app(SelfieSettings(internal_token=TOKEN))
    handler = JsonCapture()
    logging.getLogger().addHandler(handler)
    try:
        with TestClient(app) as tc:
            wait_until(lambda: tc.get("/healthz").json()["status"] == "error", what="load failed")
            health = tc.get("/healthz")
            resp = tc.post("/v1/profile/analyze", files={"file": ("a.png", png(), "image/png")}, headers=AUTH)
    finally:
        logging.getLogger().removeHandler(handler)
    assert health.status_code == 503 and resp.status_code == 503
    for text in (health.text, resp.text):
        assert "/srv" not in text and "safetensors" not in text
    assert "model load failed" in health.json()["detail"]
    assert any(rec.exc_info and SECRET in out.get("exc", "") for rec, out in handler.records)
