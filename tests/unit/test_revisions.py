"""Model revisions: one setting per model, empty for the main branch, reaching the fetch and the loaders."""

from __future__ import annotations

import pytest

from scripts import fetch_models
from services.image_worker.settings import ImageSettings
from services.llm_service.guard import guard_backend_settings
from services.llm_service.settings import LlmSettings
from services.selfie_feature_worker.settings import SelfieSettings


def test_an_empty_revision_is_the_main_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("IMAGE_MODEL_REVISION", "LLM_MODEL_REVISION", "LLM_GUARD_MODEL_REVISION", "SELFIE_VLM_REVISION")
    for name in names:
        monkeypatch.setenv(name, "  ")
    assert ImageSettings().model_revision is None
    llm = LlmSettings()
    assert llm.model_revision is None and llm.guard_model_revision is None
    assert SelfieSettings().vlm_revision is None


def test_the_guard_loads_its_own_revision_not_the_chat_models() -> None:
    settings = LlmSettings(model_revision="chat-sha", guard_model_revision=None)
    assert guard_backend_settings(settings).model_revision is None
    settings = LlmSettings(model_revision="chat-sha", guard_model_revision="guard-sha")
    assert guard_backend_settings(settings).model_revision == "guard-sha"


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        (
            "llm",
            {"LLM_MODEL_REVISION": "m1", "LLM_GUARD_MODEL_REVISION": "g1", "LLM_GUARD_BACKEND": "vllm"},
            [("Qwen/Qwen2.5-7B-Instruct", "m1"), ("Qwen/Qwen3Guard-Gen-0.6B", "g1")],
        ),
        ("profile", {"IMAGE_MODEL_REVISION": "z1"}, [("Tongyi-MAI/Z-Image-Turbo", "z1")]),
    ],
)
def test_the_fetch_downloads_each_model_at_its_revision(
    monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fetched: list[tuple[str, str | None]] = []
    monkeypatch.setattr(
        fetch_models, "fetch_hub_model", lambda model, revision=None, **_: fetched.append((model, revision))
    )
    assert fetch_models.main(service) == 0
    assert fetched == expected


def test_the_selfie_fetch_downloads_the_vlm_at_its_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFIE_VLM_REVISION", "v1")
    monkeypatch.setenv("SELFIE_DETECTOR_WEIGHTS", "nudenet")
    fetched: list[tuple[str, str | None]] = []
    monkeypatch.setattr(
        fetch_models, "fetch_hub_model", lambda model, revision=None, **_: fetched.append((model, revision))
    )
    assert fetch_models.main("selfie_feature") == 0
    assert fetched == [("Qwen/Qwen2-VL-7B-Instruct", "v1")]
