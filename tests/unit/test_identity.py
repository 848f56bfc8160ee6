"""The identity score in process: cosine maths, face crops, and the comparer on the real tiny models.

The comparer is built through the worker's own code path (``build_detector``, ``QwenVlDescriber``,
``build_comparer``) on nudenet's pretrained face detector and the tiny random Qwen2-VL. Random weights make
the scores meaningless as identity, but some properties hold for any weights, and those are what is asserted:
identical input gives an identical embedding (similarity 1), a missing face gives null with its reason, and a
candidate's score does not depend on the other candidates of its request.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage import data

from devtools import stack_env
from devtools.photos import astronaut, encode
from services.selfie_feature_worker.detection import DetectedFace, build_detector
from services.selfie_feature_worker.face_embedding import VlmFaceEmbedder, built_by_tiny_models, cosine
from services.selfie_feature_worker.identity import IdentityComparer, build_comparer, face_crop
from services.selfie_feature_worker.pipeline import SelfieAnalyzer
from services.selfie_feature_worker.settings import SelfieSettings
from services.selfie_feature_worker.vlm import QwenVlDescriber
from shared.errors import PayloadTooLarge, UnsupportedMedia, ValidationFailed
from shared.models import IdentityCompareRequest
from tests.helpers.photos import truncated_jpeg


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def jpeg(img: Image.Image) -> str:
    return b64(encode(img, "JPEG", quality=92))


def cameraman() -> Image.Image:
    """A different person: skimage's cameraman (greyscale, a smaller face than the astronaut's)."""
    return Image.fromarray(data.camera()).convert("RGB")


def plain() -> Image.Image:
    return Image.new("RGB", (320, 240), (90, 140, 200))


# --- cosine -------------------------------------------------------------------------------------------------


def test_cosine_of_known_vectors() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, 7.5 * a) == pytest.approx(1.0)  # length does not matter
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(np.sqrt(0.5))


def test_cosine_edge_cases() -> None:
    assert cosine(np.zeros(4), np.ones(4)) == 0.0
    # float32 rounding of a unit vector with itself can exceed 1; the answer stays in range.
    v = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    v /= np.linalg.norm(v)
    assert -1.0 <= cosine(v, v) <= 1.0
    with pytest.raises(ValueError, match="differ in size"):
        cosine(np.ones(3), np.ones(4))


# --- crop and tiny-model detection --------------------------------------------------------------------------


def test_face_crop_is_a_square_centred_on_the_face() -> None:
    image = Image.new("RGB", (400, 300))
    crop = face_crop(image, DetectedFace(x=100, y=50, w=80, h=120, confidence=0.9), margin=0.25)
    # The long side (120) widened by 25 % on each side.
    assert crop.size == (180, 180)
    # Near the edge it runs past the image rather than shifting off the face.
    edge = face_crop(image, DetectedFace(x=0, y=0, w=40, h=40, confidence=0.9), margin=0.5)
    assert edge.size == (80, 80)
    assert edge.getpixel((0, 0)) == (0, 0, 0)


def test_tiny_model_folders_are_recognised(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    assert built_by_tiny_models(str(tiny_models["qwen_vl"])) is True
    # Same folder name, no marker from the builder: not ours.
    copy = tmp_path / "qwen2-vl-tiny"
    copy.mkdir()
    assert built_by_tiny_models(str(copy)) is False
    (tmp_path / "qwen2-vl-tiny.complete").touch()
    assert built_by_tiny_models(str(copy)) is True
    assert built_by_tiny_models("Qwen/Qwen2-VL-7B-Instruct") is False


def test_settings_refuse_image_limits_the_body_limit_cannot_carry() -> None:
    with pytest.raises(ValidationError, match="do not fit in max_json_bytes"):
        SelfieSettings(identity_max_image_bytes=3 * 1024 * 1024)
    with pytest.raises(ValidationError, match="do not fit in max_json_bytes"):
        SelfieSettings(max_json_bytes=1024 * 1024)
    assert SelfieSettings(identity_max_image_bytes=100_000, max_json_bytes=1024 * 1024).max_json_bytes
    # With the route off, the upload limits are the operator's own business.
    assert SelfieSettings(identity_embedder="off", max_body_bytes=4 * 1024 * 1024).max_body_bytes


def test_request_bounds_the_candidates() -> None:
    IdentityCompareRequest(reference="x", candidates=["y"] * 4)
    for candidates in ([], ["y"] * 5):
        with pytest.raises(ValidationError):
            IdentityCompareRequest(reference="x", candidates=candidates)


# --- the comparer on the tiny models ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SelfieSettings:
    scratch = tmp_path_factory.mktemp("identity-unit")
    env = stack_env.selfie_env(tiny_models, "unit-token-identity-7a1", scratch)
    fields = {key.removeprefix("SELFIE_").lower(): value for key, value in env.items()}
    return SelfieSettings(**fields, identity_max_image_bytes=400_000)


@pytest.fixture(scope="module")
def vlm(settings: SelfieSettings) -> QwenVlDescriber:
    return QwenVlDescriber(settings)


@pytest.fixture(scope="module")
def comparer(settings: SelfieSettings, vlm: QwenVlDescriber) -> IdentityComparer:
    analyzer = SelfieAnalyzer(settings, build_detector(settings), vlm)
    built = build_comparer(settings, analyzer.detector, vlm, analyzer.budget)
    assert built is not None
    return built


def compare(comparer: IdentityComparer, reference: str, *candidates: str) -> list[dict]:
    response = comparer.compare(IdentityCompareRequest(reference=reference, candidates=list(candidates)))
    return [s.model_dump() for s in response.scores]


@pytest.fixture(scope="module")
def astronaut_jpeg() -> str:
    return jpeg(astronaut())


def test_same_image_scores_one(comparer: IdentityComparer, astronaut_jpeg: str) -> None:
    response = comparer.compare(IdentityCompareRequest(reference=astronaut_jpeg, candidates=[astronaut_jpeg]))
    [score] = response.scores
    assert score.reason is None
    assert score.similarity == pytest.approx(1.0, abs=1e-5)
    # The tiny model's folder: random weights, and the response says so.
    assert (response.embedder, response.meaningful) == ("vlm:qwen2-vl-tiny", False)
    assert set(response.timings_ms) == {"decode", "detect", "embed"}


def test_other_face_scores_lower_than_the_same_face(comparer: IdentityComparer, astronaut_jpeg: str) -> None:
    # Holds on the tiny random model too (checked: about -0.9 against 1.0); a property of these two photos
    # through these weights, not a claim that random features recognise people.
    same, other = compare(comparer, astronaut_jpeg, astronaut_jpeg, jpeg(cameraman()))
    assert other["reason"] is None and other["similarity"] is not None
    assert other["similarity"] < same["similarity"] - 0.1


def test_faceless_candidate_is_null_with_its_reason(comparer: IdentityComparer, astronaut_jpeg: str) -> None:
    scores = compare(comparer, astronaut_jpeg, jpeg(plain()), astronaut_jpeg)
    assert scores[0] == {"similarity": None, "reason": "no_face_in_candidate"}
    assert scores[1]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_faceless_reference_nulls_every_candidate(comparer: IdentityComparer, astronaut_jpeg: str) -> None:
    scores = compare(comparer, jpeg(plain()), astronaut_jpeg, jpeg(plain()))
    assert scores == [{"similarity": None, "reason": "no_face_in_reference"}] * 2


def test_a_score_does_not_depend_on_the_other_candidates(
    comparer: IdentityComparer, astronaut_jpeg: str
) -> None:
    # The crops are embedded in one batch: each image must still attend to its own patches only.
    smaller = jpeg(astronaut().resize((300, 300), Image.Resampling.LANCZOS))
    [alone] = compare(comparer, astronaut_jpeg, smaller)
    batched = compare(comparer, astronaut_jpeg, jpeg(cameraman()), smaller, jpeg(plain()), astronaut_jpeg)
    assert batched[1]["similarity"] == pytest.approx(alone["similarity"], abs=1e-5)
    # The same face at another resolution stays closer than another person's.
    assert alone["similarity"] > batched[0]["similarity"]


def test_bad_images_are_refused_naming_the_field(comparer: IdentityComparer, astronaut_jpeg: str) -> None:
    cases = [
        ("not base64 at all!", ValidationFailed, "not valid base64"),
        (b64(truncated_jpeg()), ValidationFailed, "corrupt or truncated"),
        (b64(b"\x00\x01 definitely not an image" * 10), UnsupportedMedia, "not a readable image"),
        (b64(np.random.default_rng(1).bytes(500_000)), PayloadTooLarge, "larger than 400000 bytes"),
    ]
    for payload, error, words in cases:
        with pytest.raises(error) as caught:
            compare(comparer, astronaut_jpeg, astronaut_jpeg, payload)
        assert caught.value.detail.startswith("candidates[1]: ") and words in caught.value.detail
        assert caught.value.param == "candidates[1]"
    with pytest.raises(ValidationFailed, match=r"^reference: not valid base64"):
        compare(comparer, "%%%", astronaut_jpeg)


def test_json_body_errors_name_the_field_not_the_input(
    comparer: IdentityComparer, astronaut_jpeg: str
) -> None:
    body = IdentityCompareRequest.model_construct(reference=astronaut_jpeg, candidates=[astronaut_jpeg] * 5)
    with pytest.raises(ValidationFailed) as caught:
        comparer.compare_json(body.model_dump_json().encode())
    assert caught.value.detail.startswith("candidates: ")
    assert astronaut_jpeg[:40] not in caught.value.detail
    ok = comparer.compare_json(
        IdentityCompareRequest(reference=astronaut_jpeg, candidates=[astronaut_jpeg])
        .model_dump_json()
        .encode()
    )
    assert "parse" in ok.timings_ms and ok.scores[0].similarity == pytest.approx(1.0, abs=1e-5)


@pytest.fixture
def held_vlm_lock(vlm: QwenVlDescriber) -> Iterator[threading.Lock]:
    lock = vlm._lock
    lock.acquire()
    try:
        yield lock
    finally:
        if lock.locked():
            lock.release()


def test_embedding_waits_for_the_vlm_an_analysis_holds(
    comparer: IdentityComparer, held_vlm_lock: threading.Lock
) -> None:
    """The embedder and the describer drive one model object: an embed waits while a generation runs."""
    embedder = comparer.embedder
    assert isinstance(embedder, VlmFaceEmbedder)
    crop = astronaut().resize((224, 224))
    result: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: result.append(embedder.embed([crop])))
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive() and not result  # parked on the describer's lock
    held_vlm_lock.release()
    thread.join(timeout=60)
    assert not thread.is_alive() and result[0].shape[0] == 1
