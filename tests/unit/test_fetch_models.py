"""The deploy-time fetch of the face detector's weights: verified before installed, nothing half-written.

Offline: the "server" is a file:// URL on tmp_path, read through the same urllib call as an https one. The
last tests run ``python -m scripts.fetch_models selfie_feature`` itself, as ``deploy_service.sh`` does.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devtools.service_process import REPO_ROOT
from scripts.verified_download import VerifiedDownloadError, install_verified

PIN = "SELFIE_DETECTOR_WEIGHTS_SHA256"
WEIGHTS = b"not really a .pt, but bytes with a known hash\n" * 5000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The published weights, served as a file:// URL."""
    path = tmp_path / "release" / "yolov8n-face-lindevs.pt"
    path.parent.mkdir()
    path.write_bytes(WEIGHTS)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The pod's model cache; created by the fetch itself."""
    return tmp_path / "workspace" / "models"


def test_right_checksum_installs_the_file(source: Path, models: Path) -> None:
    target = models / "yolov8n-face-lindevs.pt"
    assert install_verified(source.as_uri(), target, sha256(WEIGHTS), pin_setting=PIN) == "installed"
    assert target.read_bytes() == WEIGHTS
    # Only the target: the temporary file was renamed onto it, not copied.
    assert sorted(p.name for p in models.iterdir()) == [target.name]
    assert target.stat().st_mode & 0o777 == 0o644


def test_checksum_is_compared_case_insensitively(source: Path, models: Path) -> None:
    target = models / "w.pt"
    assert install_verified(source.as_uri(), target, sha256(WEIGHTS).upper(), pin_setting=PIN) == "installed"


def test_wrong_checksum_is_a_clear_error_and_leaves_nothing(source: Path, models: Path) -> None:
    target = models / "yolov8n-face-lindevs.pt"
    wrong = "0" * 64
    with pytest.raises(VerifiedDownloadError) as caught:
        install_verified(source.as_uri(), target, wrong, pin_setting=PIN)
    message = str(caught.value)
    assert "sha256 mismatch" in message
    assert f"expected {wrong}" in message and f"got {sha256(WEIGHTS)}" in message
    assert "nothing installed" in message
    assert not target.exists()
    assert list(models.iterdir()) == []  # no .part left either


def test_present_file_with_the_right_hash_is_kept_without_downloading(source: Path, models: Path) -> None:
    target = models / "w.pt"
    models.mkdir(parents=True)
    target.write_bytes(WEIGHTS)
    before = target.stat().st_mtime_ns
    # A URL that cannot be read: a download would fail, so "kept" proves none was tried.
    missing_url = (source.parent / "gone.pt").as_uri()
    assert install_verified(missing_url, target, sha256(WEIGHTS), pin_setting=PIN) == "kept"
    assert target.stat().st_mtime_ns == before and target.read_bytes() == WEIGHTS


def test_present_file_with_a_wrong_hash_is_refused_and_left_alone(source: Path, models: Path) -> None:
    target = models / "w.pt"
    models.mkdir(parents=True)
    planted = b"someone else's weights"
    target.write_bytes(planted)
    with pytest.raises(VerifiedDownloadError) as caught:
        install_verified(source.as_uri(), target, sha256(WEIGHTS), pin_setting=PIN)
    message = str(caught.value)
    assert "present but its sha256 is wrong" in message
    assert f"expected {sha256(WEIGHTS)}" in message and f"got {sha256(planted)}" in message
    assert target.read_bytes() == planted
    assert sorted(p.name for p in models.iterdir()) == ["w.pt"]


def test_unpinned_download_is_not_installed_and_names_the_hash_to_pin(source: Path, models: Path) -> None:
    target = models / "w.pt"
    with pytest.raises(VerifiedDownloadError) as caught:
        install_verified(source.as_uri(), target, "", pin_setting=PIN)
    assert f"{PIN}={sha256(WEIGHTS)}" in str(caught.value)
    assert not target.exists() and list(models.iterdir()) == []


def test_unpinned_present_file_is_refused(models: Path) -> None:
    target = models / "w.pt"
    models.mkdir(parents=True)
    target.write_bytes(WEIGHTS)
    with pytest.raises(VerifiedDownloadError, match=f"{PIN}={sha256(WEIGHTS)}"):
        install_verified("", target, "", pin_setting=PIN)


def test_unreadable_url_and_missing_url_are_errors(source: Path, models: Path) -> None:
    target = models / "w.pt"
    with pytest.raises(VerifiedDownloadError, match=r"download of .* failed"):
        install_verified((source.parent / "gone.pt").as_uri(), target, sha256(WEIGHTS), pin_setting=PIN)
    assert list(models.iterdir()) == []
    with pytest.raises(VerifiedDownloadError, match="no URL"):
        install_verified("", target, sha256(WEIGHTS), pin_setting=PIN)


def test_oversized_download_is_cut_off(source: Path, models: Path) -> None:
    with pytest.raises(VerifiedDownloadError, match="more than 1000 bytes"):
        install_verified(source.as_uri(), models / "w.pt", sha256(WEIGHTS), pin_setting=PIN, max_bytes=1000)
    assert list(models.iterdir()) == []


class _InterruptedResponse(io.BytesIO):
    """A response that delivers one chunk, then the operator presses Ctrl-C."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell():
            raise KeyboardInterrupt
        return super().read(size)


def test_interrupted_download_leaves_nothing(
    source: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def urlopen(url: str, timeout: float) -> Any:
        return _InterruptedResponse(WEIGHTS)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(KeyboardInterrupt):
        install_verified(source.as_uri(), models / "w.pt", sha256(WEIGHTS), pin_setting=PIN)
    assert list(models.iterdir()) == []


# --- the deploy step itself ------------------------------------------------------------------------------


def fetch_selfie(tiny_models: dict[str, Path], **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SELFIE_") and k != "CONFIG_FILE"}
    # A local VLM path: the fetch uses it as it is, so the run stays offline.
    full.update(SELFIE_VLM_MODEL=str(tiny_models["qwen_vl"]), **env)
    return subprocess.run(
        [sys.executable, "-m", "scripts.fetch_models", "selfie_feature"],
        cwd=REPO_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_fetch_installs_then_keeps_verified_weights(
    tiny_models: dict[str, Path], source: Path, models: Path
) -> None:
    target = models / "yolov8n-face-lindevs.pt"
    env = {
        "SELFIE_DETECTOR_WEIGHTS": str(target),
        "SELFIE_DETECTOR_WEIGHTS_URL": source.as_uri(),
        "SELFIE_DETECTOR_WEIGHTS_SHA256": sha256(WEIGHTS),
    }
    first = fetch_selfie(tiny_models, **env)
    assert first.returncode == 0, first.stderr
    assert f"detector weights installed: {target}" in first.stdout
    assert target.read_bytes() == WEIGHTS
    second = fetch_selfie(tiny_models, **env)
    assert second.returncode == 0, second.stderr
    assert f"detector weights kept: {target}" in second.stdout


def test_deploy_fetch_with_wrong_checksum_exits_nonzero_and_installs_nothing(
    tiny_models: dict[str, Path], source: Path, models: Path
) -> None:
    target = models / "yolov8n-face-lindevs.pt"
    wrong = "ab" * 32
    result = fetch_selfie(
        tiny_models,
        SELFIE_DETECTOR_WEIGHTS=str(target),
        SELFIE_DETECTOR_WEIGHTS_URL=source.as_uri(),
        SELFIE_DETECTOR_WEIGHTS_SHA256=wrong,
    )
    assert result.returncode == 1
    assert f"expected {wrong}, got {sha256(WEIGHTS)}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists() and list(models.iterdir()) == []


def test_deploy_fetch_without_url_names_the_setting(tiny_models: dict[str, Path], models: Path) -> None:
    result = fetch_selfie(
        tiny_models, SELFIE_DETECTOR_WEIGHTS=str(models / "w.pt"), SELFIE_DETECTOR_WEIGHTS_URL=""
    )
    assert result.returncode == 1
    assert "SELFIE_DETECTOR_WEIGHTS_URL is empty" in result.stderr


def test_deploy_fetch_has_nothing_to_do_for_nudenet(tiny_models: dict[str, Path]) -> None:
    result = fetch_selfie(tiny_models, SELFIE_DETECTOR_WEIGHTS="nudenet", SELFIE_DETECTOR_WEIGHTS_URL="")
    assert result.returncode == 0, result.stderr
    assert "detector weights: nudenet" in result.stdout


def test_default_source_is_the_pinned_lindevs_release() -> None:
    from services.selfie_feature_worker.settings import SelfieSettings

    settings = SelfieSettings()
    # A release tag, never "latest": the pinned hash belongs to one upload.
    assert "/releases/download/1.0.1/yolov8n-face-lindevs.pt" in settings.detector_weights_url
    assert settings.detector_weights_sha256 == (
        "b038ca653b503453a94f6e12d76feca6840b2a97d7a1322b4498c5e922f29832"
    )
    assert settings.detector_weights.endswith("/yolov8n-face-lindevs.pt")
