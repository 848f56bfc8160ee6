from __future__ import annotations

import pytest

from shared.public_names import public_model_id


@pytest.mark.parametrize(
    ("model_id", "served", "expected"),
    [
        ("Tongyi-MAI/Z-Image-Turbo", None, "Tongyi-MAI/Z-Image-Turbo"),
        ("/tmp/pytest-1/tiny-models/zimage", None, "zimage"),
        ("/srv/models/qwen/", None, "qwen"),
        ("./models/llm", None, "llm"),
        ("~/models/llm", None, "llm"),
        ("/srv/models/qwen", "img-pod-llm", "img-pod-llm"),
    ],
)
def test_public_model_id_never_shows_a_path(model_id: str, served: str | None, expected: str) -> None:
    assert public_model_id(model_id, served) == expected
