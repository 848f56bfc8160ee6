"""Install one file from a URL only if its sha256 is the pinned one; never leave a half-written file behind.

The download streams into a temporary file in the target's own directory while it is hashed; only a file
whose hash matches is renamed onto the target (``os.replace``: atomic on one file system), so a reader of
the target sees either nothing or the whole verified file. Any failure removes the temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

CHUNK_BYTES = 1 << 20
# The largest YOLOv8-face .pt (x) is 130 MB: a server that streams without end is cut off well above it.
DEFAULT_MAX_BYTES = 2 << 30


class VerifiedDownloadError(Exception):
    """Why a file was not installed, worded for the operator running the deploy."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _pin_hint(pin_setting: str, got: str) -> str:
    return f"if you trust this file, pin it with {pin_setting}={got}"


def _check_present(target: Path, expected: str, pin_setting: str) -> None:
    got = sha256_of(target)
    if not expected:
        raise VerifiedDownloadError(
            f"{target} is present but {pin_setting} is empty, so it cannot be verified; its sha256 is {got}: "
            + _pin_hint(pin_setting, got)
        )
    if got != expected:
        raise VerifiedDownloadError(
            f"{target} is present but its sha256 is wrong: expected {expected}, got {got}. It was left as it "
            f"is: remove it to download the pinned file again, or set {pin_setting} to the file you mean"
        )


def _download(url: str, tmp: Path, timeout_s: float, max_bytes: int) -> str:
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, tmp.open("wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise VerifiedDownloadError(f"{url} sent more than {max_bytes} bytes; nothing installed")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            # The rename must not land before the bytes do, or a crash leaves a truncated "verified" file.
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise VerifiedDownloadError(f"download of {url} failed ({exc}); nothing installed") from exc
    return digest.hexdigest()


def install_verified(
    url: str,
    target: Path,
    expected_sha256: str,
    *,
    pin_setting: str,
    timeout_s: float = 60.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Literal["kept", "installed"]:
    """Make ``target`` the file at ``url`` whose sha256 is ``expected_sha256``; raise if it cannot be.

    ``kept``: the target was there already with that hash. ``installed``: it was downloaded and verified.
    A present file with another hash is an error, not overwritten: someone put it there. An empty
    ``expected_sha256`` installs nothing; the error names the hash to pin (``pin_setting``).
    """
    expected = expected_sha256.strip().lower()
    if target.is_file():
        _check_present(target, expected, pin_setting)
        return "kept"
    if not url:
        raise VerifiedDownloadError(f"{target} is missing and no URL to fetch it from is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        got = _download(url, tmp, timeout_s, max_bytes)
        if not expected:
            raise VerifiedDownloadError(
                f"{pin_setting} is empty, so the download from {url} cannot be verified and was not "
                f"installed; its sha256 is {got}: " + _pin_hint(pin_setting, got)
            )
        if got != expected:
            raise VerifiedDownloadError(
                f"sha256 mismatch for {url}: expected {expected}, got {got}; nothing installed"
            )
        # mkstemp makes the file 0600; the worker may run as another user of the pod.
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return "installed"
