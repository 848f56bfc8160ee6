"""The term files and the normaliser: every listed word is found where it is meant to be, in its own
language; local words only with their own language; files with mistakes fail to load."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.policy import evaluate_private_chat, normalize, sanitize_general
from shared.policy.lexicon import LANGUAGES, TERMS_DIR, Language, load_language
from shared.policy.normalizer import fold_text, term_form

MINORS = "minors"
REQUIRED = {"en", "es", "pt", "fr", "de", "it", "ru", "ja", "ko", "zh", "ar", "hi", "tr", "id"}
_SEXUAL = ("explicit", "sexual_act", "sexualizing")


def _terms(groups: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(lang.code, term) for lang in LANGUAGES for group in groups for term in lang.terms(group)]


def _lang(code: str) -> Language:
    return next(lang for lang in LANGUAGES if lang.code == code)


def _partner(code: str, group: str) -> str:
    """A term of the same file to pair with: its first minor word, or its first nudity word."""
    return _lang(code).terms(group)[0]


def test_every_required_language_has_a_file() -> None:
    assert {lang.code for lang in LANGUAGES} >= REQUIRED
    for lang in LANGUAGES:
        for group in ("minor", "explicit", "sexualizing", "minor_intrinsic"):
            assert lang.terms(group), (lang.code, group)


@pytest.mark.parametrize(("code", "term"), _terms(("minor", "minor_intrinsic", *_SEXUAL, "benign")))
def test_every_term_normalises_to_something(code: str, term: str) -> None:
    kind, form = term_form(term)
    assert form.strip(), (code, term)
    assert kind in ("latin", "script", "dense")


@pytest.mark.parametrize(("code", "term"), _terms(("minor",)))
def test_every_minor_word_blocks_with_a_nudity_word_of_its_language(code: str, term: str) -> None:
    text = f"{term} {_partner(code, 'explicit')}"
    assert evaluate_private_chat(text).category == MINORS, text


@pytest.mark.parametrize(("code", "term"), _terms(_SEXUAL))
def test_every_sexual_word_blocks_with_a_minor_word_of_its_language(code: str, term: str) -> None:
    text = f"{_partner(code, 'minor')} {term}"
    assert evaluate_private_chat(text).category == MINORS, text


@pytest.mark.parametrize(("code", "term"), _terms(("minor_intrinsic",)))
def test_every_intrinsic_term_blocks_alone(code: str, term: str) -> None:
    assert evaluate_private_chat(term).category == MINORS, term


@pytest.mark.parametrize(("code", "term"), _terms(("sexual_violence",)))
def test_every_sexual_violence_term_blocks_alone(code: str, term: str) -> None:
    assert evaluate_private_chat(term).blocked, term


@pytest.mark.parametrize(("code", "term"), _terms(("explicit",)))
def test_every_nudity_word_is_soft_blocked_alone(code: str, term: str) -> None:
    decision = sanitize_general(term)
    assert decision.soft_blocked and not decision.blocked, term


@pytest.mark.parametrize(("code", "term"), _terms(("benign",)))
def test_benign_phrases_excuse_their_words(code: str, term: str) -> None:
    # Next to a minor word of the same language, the phrase must not read as sexual.
    text = f"{term} {_partner(code, 'minor')}"
    assert not evaluate_private_chat(text).blocked, text


@pytest.mark.parametrize(("code", "term"), _terms(("minor_local",)))
def test_local_minor_words_count_only_with_their_own_language(code: str, term: str) -> None:
    own = f"{term} {_partner(code, 'explicit')}"
    assert evaluate_private_chat(own).category == MINORS, own
    # Folded to plain letters ("nina", "kind") it is also another language's word or a name.
    plain = "".join(c for c in unicodedata.normalize("NFKD", term) if not unicodedata.combining(c))
    foreign = f"{plain} naked"
    assert not evaluate_private_chat(foreign).blocked, foreign


@pytest.mark.parametrize(("code", "term"), _terms(("explicit_local", "sexualizing_local")))
def test_local_sexual_words_count_only_with_their_own_language(code: str, term: str) -> None:
    own = f"{_partner(code, 'minor')} {term}"
    assert evaluate_private_chat(own).category == MINORS, own
    foreign = f"child {term}"
    assert not evaluate_private_chat(foreign).blocked, foreign


def test_accented_local_word_counts_with_any_language() -> None:
    # "niña" is unambiguous with its tilde; "nina" may be a name.
    assert evaluate_private_chat("niña nude").category == MINORS
    assert not evaluate_private_chat("Nina nude").blocked


@pytest.mark.parametrize(
    ("term", "kind", "form"),
    [
        ("niña", "latin", "nina"),
        ("Mädchen", "latin", "madchen"),
        ("ребёнок", "latin", "rebenok"),
        ("çocuğu", "latin", "cocugu"),
        ("子供", "dense", "子供"),
        ("ヌード", "dense", "ぬーど"),
        ("兒童", "dense", "儿童"),
        ("옷을 벗", "dense", "옷을 벗"),
        ("طِفْلَة", "script", "طفله"),
        ("ल\u095cकी", "script", "लडकी"),
    ],
)
def test_term_forms(term: str, kind: str, form: str) -> None:
    assert term_form(term) == (kind, form)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n u d e   c h i l d", "nude child"),  # a wider gap between words than between letters
        ("n u d e / c h i l d", "nude child"),
        ("n u d e\n\nc h i l d", "nude child"),
        ("n u d e c h i l d", "nudechild"),  # one gap everywhere: the word break is not recoverable
        ("s e x  a", "sex a"),
        ("a  b", "ab"),  # no longer word between: joined, so the output never holds a run
        ("١٢ year old", "12 year old"),
        ("@_$_00", "00"),  # a run of lone symbols joins to nothing
        ("nu\U000e0041de", "nude"),  # tag characters are invisible: dropped, not a word break
    ],
    ids=ascii,
)
def test_normalize_spacing_and_digits(text: str, expected: str) -> None:
    assert normalize(text) == expected
    assert normalize(expected) == normalize(text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab se x1@$!|*.-_ \t\n/,0руя ёй 裸体 아이 طفل ्िं", max_size=40))
def test_normalize_is_idempotent_across_gaps_and_scripts(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert sanitize_general(text).blocked == evaluate_private_chat(text).blocked


def test_cyrillic_is_folded_both_ways() -> None:
    look_alike, transliterated = fold_text("ѕеху голая").latin
    assert look_alike.startswith("sexy")
    assert transliterated.endswith("golaya")
    # Spaced-out Cyrillic is joined before "я" becomes two Latin letters.
    assert fold_text("г о л а я").latin[-1] == "golaya"
    # Latin look-alikes inside a Cyrillic word are read as Cyrillic ("o", "a" and "e" here).
    assert fold_text("гoлaя дeвочка").latin[-1] == "golaya devochka"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("xx.yaml", "language: xx\nname: X\nminors: [a]\n", "unknown keys"),
        ("xx.yaml", "language: yy\nname: X\n", "'language' must be"),
        ("xx.yaml", "language: xx\nname: X\nminor: [on]\n", "quote yes/no/on/off"),
        ("xx.yaml", "language: xx\nname: X\nages:\n  numbers: {on: 10}\n", "quote yes/no/on/off"),
        ("xx.yaml", "language: xx\nname: X\nages:\n  unit: [y]\n", "unknown ages keys"),
        ("xx.yaml", "language: xx\nname: X\nfold: {ab: c}\n", "single characters"),
    ],
)
def test_a_file_with_a_mistake_does_not_load(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_language(_write(tmp_path, name, text))


def test_the_shipped_files_load_and_match_their_names() -> None:
    for path in sorted(TERMS_DIR.glob("*.yaml")):
        assert load_language(path).code == path.stem


@pytest.mark.parametrize(
    "unit",
    ["голая девочка ", "г о л а я ", "гoлaя", "طفلة عارية ", "ط ف ل ", "儿童裸体", "裸 体 ",
     "아이들은 해야한다 ", "नंगी बच्ची ", "n u d e   ", "१२ साल ", "lo1i ", "г*лая ", "ぬーどる ",
     "sexy she is 33 ", "sexy 1 2 3 "],
)  # fmt: skip
def test_large_multilingual_input_is_linear(unit: str) -> None:
    # Generous, like test_policy's bound: catches quadratic scans, not small regressions (see bench/).
    text = (unit * (100_000 // len(unit) + 1))[:100_000]
    start = time.perf_counter()
    sanitize_general(text)
    assert time.perf_counter() - start < 2.0
