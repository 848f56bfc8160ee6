"""Signed, expiring URLs of the images a job made (``response_format=url``).

The file behind a URL is the job's stored result (services/interface/jobs/): whichever replica made the image,
any replica on the same store serves it, and it is gone when the job's output expires
(``INTERFACE_JOBS_OUTPUT_TTL_S``). The signature is the credential (an OpenAI client fetches the URL with no
API key), so it covers the job, the image's index and the expiry; a URL past its expiry is a 404 even while
the output is still held.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

FILES_PATH = "/v1/images/files"
# Derives the URL key from the internal token, which every replica shares, when no key of its own is set.
_KEY_LABEL = b"img_pod openai image urls v1"


def url_key(secret: str | None, internal_token: str | None) -> bytes:
    """The signing key: the setting, else one derived from the internal token (both shared by every replica
    of a deployment), else random for this process (a lone interface with neither; its URLs die with it)."""
    if secret:
        return secret.encode()
    if internal_token:
        return hmac.new(internal_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
    return secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class OutputUrls:
    key: bytes

    def _sign(self, job_id: str, index: int, expires_at: int) -> str:
        message = f"{job_id}:{index}:{expires_at}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def path(self, job_id: str, index: int, expires_at: int) -> str:
        """The signed path (with its query) of image ``index`` of the job, valid until ``expires_at``."""
        sig = self._sign(job_id, index, expires_at)
        return f"{FILES_PATH}/{job_id}/{index}?expires={expires_at}&sig={sig}"

    def valid(self, job_id: str, index: int, expires: int, sig: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return expires >= now and hmac.compare_digest(sig, self._sign(job_id, index, expires))
