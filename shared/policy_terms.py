"""The English word lists, as tuples, for code that predates ``shared.policy`` becoming a package.

The lists live in ``shared/policy/terms/en.yaml`` (one file per language); new code should read
``shared.policy.lexicon``. ``services/llm_service/safety.py`` builds its caption filter from these.
"""

from __future__ import annotations

from shared.policy.lexicon import (
    CATEGORY_BESTIALITY,
    CATEGORY_EXPLICIT,
    CATEGORY_MINORS,
    CATEGORY_SEXUAL_VIOLENCE,
)
from shared.policy.lexicon import (
    LANGUAGES as _languages,
)

__all__ = [
    "ANIMAL_TERMS",
    "BENIGN_PHRASES",
    "BESTIALITY_TERMS",
    "CATEGORY_BESTIALITY",
    "CATEGORY_EXPLICIT",
    "CATEGORY_MINORS",
    "CATEGORY_SEXUAL_VIOLENCE",
    "COERCION_TERMS",
    "EXPLICIT_TERMS",
    "INCAPACITATION_NEAR_TERMS",
    "MINOR_INTRINSIC_TERMS",
    "MINOR_TERMS",
    "SEXUALIZING_TERMS",
    "SEXUAL_ACT_TERMS",
    "SEXUAL_VIOLENCE_TERMS",
]

_english = next(lang for lang in _languages if lang.code == "en")

MINOR_TERMS: tuple[str, ...] = _english.terms("minor")
MINOR_INTRINSIC_TERMS: tuple[str, ...] = _english.terms("minor_intrinsic")
SEXUALIZING_TERMS: tuple[str, ...] = _english.terms("sexualizing")
SEXUAL_ACT_TERMS: tuple[str, ...] = _english.terms("sexual_act")
SEXUAL_VIOLENCE_TERMS: tuple[str, ...] = _english.terms("sexual_violence")
COERCION_TERMS: tuple[str, ...] = _english.terms("coercion")
INCAPACITATION_NEAR_TERMS: tuple[str, ...] = _english.terms("near_act")
BESTIALITY_TERMS: tuple[str, ...] = _english.terms("bestiality")
ANIMAL_TERMS: tuple[str, ...] = _english.terms("animals")
EXPLICIT_TERMS: tuple[str, ...] = _english.terms("explicit")
BENIGN_PHRASES: tuple[str, ...] = _english.terms("benign")
