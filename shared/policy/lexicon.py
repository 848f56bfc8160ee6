"""The policy's word lists: one YAML file per language in ``terms/``, read and checked once at import.

The files are data only. Terms are written the way a speaker writes them (capitals, accents, any script);
``shared.policy.match`` puts every term through the same normaliser as a prompt, so a term and a prompt
always meet in the same form. A file with an unknown key, a misspelt group name or a value of the wrong
shape fails the import, so a typo cannot silently switch a list off. ``terms/README.md`` describes the
keys; adding a language is adding a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

__all__ = [
    "AGE_LISTS",
    "CATEGORY_BESTIALITY",
    "CATEGORY_EXPLICIT",
    "CATEGORY_MINORS",
    "CATEGORY_SEXUAL_VIOLENCE",
    "LANGUAGES",
    "LOCAL_GROUPS",
    "TERMS_DIR",
    "TERM_GROUPS",
    "Ages",
    "Language",
    "load_language",
]

# Stable category names; services and logs key on these strings.
CATEGORY_MINORS = "minors"
CATEGORY_SEXUAL_VIOLENCE = "sexual_violence"
CATEGORY_BESTIALITY = "bestiality"
CATEGORY_EXPLICIT = "explicit"

TERMS_DIR = Path(__file__).resolve().parent / "terms"

# Every list a language file may hold; what each one does is in terms/README.md.
TERM_GROUPS: tuple[str, ...] = (
    "minor",
    "minor_intrinsic",
    "explicit",
    "sexual_act",
    "sexualizing",
    "sexual_violence",
    "coercion",
    "near_act",
    "bestiality",
    "animals",
    "animal_prepositions",
    "determiners",
    "animal_acts",
    "animal_act_links",
    "benign",
    "collapse_exceptions",
    "prefixes",
    "suffixes",
)
# Words that are also ordinary words or names elsewhere ("nina", "kind", "nudo"): they count only together
# with a term of their own file, never with another language's.
LOCAL_GROUPS: tuple[str, ...] = ("minor_local", "explicit_local", "sexual_act_local", "sexualizing_local")
AGE_LISTS: tuple[str, ...] = (
    "units",
    "not_after_units",
    "before",
    "under",
    "ordinals",
    "grades",
    "people",
    "people_plural",
    "links",
    "measures",
    "bare_units",
)
_SCALARS = ("language", "name", "near_window", "fold", "ages")


@dataclass(frozen=True, slots=True)
class Ages:
    """How a language writes an age: number words, the units after a number, the words around it."""

    numbers: Mapping[str, int] = field(default_factory=dict)
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, name: str) -> tuple[str, ...]:
        return self.lists.get(name, ())


@dataclass(frozen=True, slots=True)
class Language:
    code: str
    name: str
    groups: Mapping[str, tuple[str, ...]]
    ages: Ages
    # Character folds for the script view ("أ" -> "ا"); keys are single characters.
    fold: Mapping[str, str]
    near_window: int

    def terms(self, group: str) -> tuple[str, ...]:
        return self.groups.get(group, ())


def _strings(path: Path, key: str, value: object) -> tuple[str, ...]:
    # A bare yes/no/on/off would arrive as a bool (YAML 1.1): quote such words in the file.
    if not isinstance(value, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip() for v in value
    ):
        raise ValueError(f"{path.name}: {key} must be a list of non-empty words (quote yes/no/on/off)")
    # YAML reads a bare 18 as an int; the term is the text.
    return tuple(str(v).strip() for v in value)


def _ages(path: Path, raw: object) -> Ages:
    if raw is None:
        return Ages()
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: ages must be a mapping")
    unknown = set(raw) - {"numbers", *AGE_LISTS}
    if unknown:
        raise ValueError(f"{path.name}: unknown ages keys {sorted(unknown)}")
    numbers = raw.get("numbers") or {}
    if not isinstance(numbers, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in numbers.items()
    ):
        raise ValueError(f"{path.name}: ages.numbers must map words to whole numbers (quote yes/no/on/off)")
    lists = {name: _strings(path, f"ages.{name}", raw[name]) for name in AGE_LISTS if name in raw}
    return Ages(numbers=MappingProxyType(dict(numbers)), lists=MappingProxyType(lists))


def load_language(path: Path) -> Language:
    """Read and check one language file."""
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping at the top level")
    unknown = set(raw) - {*_SCALARS, *TERM_GROUPS, *LOCAL_GROUPS}
    if unknown:
        raise ValueError(f"{path.name}: unknown keys {sorted(unknown)}")
    if raw.get("language") != path.stem or not isinstance(raw.get("name"), str):
        raise ValueError(f"{path.name}: 'language' must be {path.stem!r} and 'name' a string")
    fold = raw.get("fold") or {}
    if not isinstance(fold, dict) or not all(
        isinstance(k, str) and len(k) == 1 and isinstance(v, str) for k, v in fold.items()
    ):
        raise ValueError(f"{path.name}: fold must map single characters to strings")
    near_window = raw.get("near_window", 0)
    if not isinstance(near_window, int) or not 0 <= near_window <= 10:
        raise ValueError(f"{path.name}: near_window must be a whole number from 0 to 10")
    groups = {
        name: _strings(path, name, raw[name])
        for name in (*TERM_GROUPS, *LOCAL_GROUPS)
        if raw.get(name) is not None
    }
    return Language(
        code=path.stem,
        name=raw["name"],
        groups=MappingProxyType(groups),
        ages=_ages(path, raw.get("ages")),
        fold=MappingProxyType(dict(fold)),
        near_window=near_window,
    )


def _load_all() -> tuple[Language, ...]:
    languages = tuple(load_language(path) for path in sorted(TERMS_DIR.glob("*.yaml")))
    if not any(lang.code == "en" for lang in languages):
        raise RuntimeError(f"no English term file in {TERMS_DIR}")
    return languages


LANGUAGES: tuple[Language, ...] = _load_all()
