"""What the model is told when it writes a persona from a brief, and the JSON schema its answer must match.

The schema is ``PersonaDraft``'s own (shared/models.py), so the answer the server constrains decoding to is
the one the service validates and the interface stores; only "required" is widened to every property, so a
constrained decoder writes every feature (null where it has nothing) instead of stopping at ``{}``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from services.llm_service.backends.base import ChatMessage
from shared.models import PERSONA_MAX_AGE, PERSONA_MIN_AGE, Features, PersonaDraft

PERSONA_SYSTEM = (
    "You create characters for a chat app. From the user's brief, invent ONE adult character and answer "
    "with a single JSON object and nothing else: no preamble, no code fence. The character is an adult "
    f"aged {PERSONA_MIN_AGE} to {PERSONA_MAX_AGE}: never a child or a teenager, whatever the brief says, "
    "and the age range in the features is an adult's too. Describe the appearance as a photo would show "
    "it (hair colour and style, eye colour, skin tone, age range such as 25-34, gender presentation, "
    "facial hair, glasses, expression, accessories, and a one-sentence description of the look); keep "
    "every text short and safe for work. Answer in this shape, with null for a trait that does not apply:\n"
    "{shape}"
)


# Documentation keys of pydantic's schema: they steer no decoder and cost prompt tokens.
_NOTES = frozenset({"title", "description", "default"})


def _for_decoding(node: Any) -> Any:
    """The schema with every object's properties required (nullable ones stay nullable) and its notes out.

    Keys are dropped only where they are notes, never inside ``properties``, whose keys are field names."""
    if isinstance(node, dict):
        out = {
            key: ({k: _for_decoding(v) for k, v in value.items()} if key in ("properties", "$defs")
                  else _for_decoding(value))
            for key, value in node.items()
            if key not in _NOTES
        }  # fmt: skip
        if isinstance(out.get("properties"), dict):
            out["required"] = list(out["properties"])
        return out
    if isinstance(node, list):
        return [_for_decoding(item) for item in node]
    return node


def _shape() -> str:
    """A filled-in example of the answer's shape: far fewer prompt tokens than the schema itself, which the
    server enforces anyway where it constrains decoding."""
    features = {
        name: (False if name == "glasses" else ["..."] if name == "accessories" else "...")
        for name in Features.model_fields
    }
    example = {"name": "...", "age": 30, "features": features, "personality": "...", "speaking_style": "..."}
    assert set(example) == set(PersonaDraft.model_fields)  # a new field must be shown to the model
    return json.dumps(example, separators=(", ", ": "))


# Built once: both are static.
PERSONA_SCHEMA: dict[str, Any] = _for_decoding(copy.deepcopy(PersonaDraft.model_json_schema()))
_SYSTEM = PERSONA_SYSTEM.format(shape=_shape())


def build_persona_messages(brief: str) -> list[ChatMessage]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": f"Brief: {brief}"}]
