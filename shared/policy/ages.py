"""Stated ages: each language's ways of writing an age under 18, compiled from its ``ages`` section.

"12 year old", "aged 12", "under 16", "5th grade", "she is 13", "girl, 12", "a 12 girl", "nude 13 year"
(English); "doce años", "12-jährige", "12 лет" (units and number words of each file); "12歳", "열두 살"
(dense scripts, where the number and the unit touch). Digits and number words are matched only inside
the ranges that make an age a minor's, so any match is one and no match needs a second look.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shared.policy.lexicon import LANGUAGES, Language
from shared.policy.match import expand, trie
from shared.policy.normalizer import term_form

__all__ = ["AgeRule", "age_rules"]


# Number patterns for the ranges that make an age a minor's: digits and number words alike are matched
# only inside their range, so any match of an age pattern is a minor's age and no match needs checking.
_DIGITS_0_17 = "(?:1[0-7]|0?[0-9])"
_DIGITS_1_17 = "(?:1[0-7]|0?[1-9])"
_DIGITS_2_17 = "(?:1[0-7]|0?[2-9])"  # "1girl" is a count of one, not an age
_DIGITS_0_18 = "(?:1[0-8]|0?[0-9])"  # "under 18"
_DIGITS_1_12 = "(?:1[0-2]|0?[1-9])"  # "5th grade"
_MINOR_AGE = 17


@dataclass(frozen=True, slots=True)
class _Shape:
    """One way of stating an age ("N year old", "aged N", "she is N"), run only when its anchor is there.

    ``anchors`` are the words (Latin views) or characters (script view) a match must hold besides the
    number: a unit, "aged", a person. Separate small patterns behind their own anchors cost far less than
    one alternation scanned at every position of every prompt.
    """

    pattern: re.Pattern[str]
    anchors: frozenset[str]


@dataclass(frozen=True, slots=True)
class AgeRule:
    """One language's ways of stating an age under 18, in Latin views or in the script view.

    Every match holds a number: a digit or one of ``numbers`` (last words of number words, or their
    characters in the script view); a text with neither, or with none of ``anchors`` (all the shapes'),
    is skipped without a scan.
    """

    on_script: bool
    numbers: frozenset[str]
    anchors: frozenset[str]
    shapes: tuple[_Shape, ...]

    def find(self, text: str, parts: frozenset[str], has_digit: bool) -> bool:
        """Whether ``text`` (whose words or characters are ``parts``) states a minor's age."""
        if not (has_digit or not self.numbers.isdisjoint(parts)) or self.anchors.isdisjoint(parts):
            return False
        return any(
            not shape.anchors.isdisjoint(parts) and shape.pattern.search(text) is not None
            for shape in self.shapes
        )


def _age_rule(lang: Language, kind: str) -> AgeRule | None:
    """The age shapes of one language whose words are of ``kind`` (latin, script or dense)."""

    def words(name: str) -> list[str]:
        return [form for k, form in map(term_form, lang.ages.get(name)) if k == kind and form]

    def alt(forms: list[str]) -> str:
        # Single-letter forms too: the collapsed view holds "thirten" for "thirteen".
        return trie(expand(forms))

    def anchored(forms: list[str]) -> frozenset[str]:
        # The first word is what sits next to the number ("year" of "year old"); characters for scripts.
        if kind == "latin":
            return frozenset(form.split(" ")[0] for form in expand(forms))
        return frozenset(ch for form in forms for ch in form)

    shapes: list[_Shape] = []

    def shape(pattern: str, anchor_words: list[str]) -> None:
        shapes.append(_Shape(re.compile(pattern), anchored(anchor_words)))

    forms = {}
    for word, value in lang.ages.numbers.items():
        word_kind, form = term_form(word)
        if word_kind == kind:
            forms[form] = value
    minor_words = [form for form, value in forms.items() if value <= _MINOR_AGE]
    num = f"(?:{alt(minor_words)}|{_DIGITS_0_17})" if minor_words else _DIGITS_0_17
    units, after, before = words("units"), words("not_after_units"), words("before")
    if kind == "dense":
        # Every number word's characters, adult ones included: "二十二岁" must not be read as "十二岁".
        digits = "0-9" + re.escape("".join(sorted({ch for form in forms for ch in form})))
        if units:
            shape(rf"(?<![{digits}]){num} ?(?:{alt(units)})", units)
        if before:
            shape(rf"(?:{alt(before)}) ?{num}(?![{digits}])", before)
    else:
        start, end = (r"\b", r"\b") if kind == "latin" else (r"(?<![^ ])", r"(?![^ ])")
        not_after = rf"(?! (?:{alt(after)}){end})" if after else ""
        if units:
            shape(rf"{start}{num} (?:{alt(units)}){end}{not_after}", units)
        if before:
            shape(rf"{start}(?:{alt(before)}) {num}{end}", before)
        if words("under"):
            shape(rf"{start}(?:{alt(words('under'))}) {_DIGITS_0_18}{end}", words("under"))
        if words("grades") and words("ordinals"):
            grades = rf"(?:{alt(words('ordinals'))}) (?:{alt(words('grades'))})"
            shape(rf"{start}{_DIGITS_1_12} {grades}{end}", words("grades"))
        people, plural = words("people"), words("people_plural")
        if people:
            # "girl, 12", "she is 13": not when a measure or another person follows ("she is 5 feet").
            links = rf"(?:(?:{alt(words('links'))}) ){{0,2}}" if words("links") else ""
            stop = alt([*words("measures"), *people, *plural])
            shape(rf"{start}(?:{alt(people)}) {links}{_DIGITS_1_17}{end}(?! (?:{stop}){end}| [0-9])", people)
            # "a 12 girl"; a word that is also a plural ("12 Mädchen") is a count there.
            singular = [word for word in people if word not in set(plural)]
            if singular:
                shape(rf"{start}{_DIGITS_2_17} (?:{alt(singular)}){end}", singular)
            if words("bare_units"):
                # "13 year" at the end of the text or before a person; "13 year anniversary" is not an age.
                bare = alt(words("bare_units"))
                shape(rf"{start}{_DIGITS_1_17} (?:{bare})(?= (?:{alt(people)}){end}|$)", words("bare_units"))
    if not shapes:
        return None
    if kind == "latin":
        numbers = frozenset(form.split(" ")[-1] for form in expand(minor_words))
    else:
        numbers = frozenset(ch for form in minor_words for ch in form)
    anchors = frozenset().union(*(s.anchors for s in shapes))
    return AgeRule(kind != "latin", numbers, anchors, tuple(shapes))


def age_rules(languages: Iterable[Language] = LANGUAGES) -> tuple[AgeRule, ...]:
    rules = (_age_rule(lang, kind) for lang in languages for kind in ("latin", "script", "dense"))
    return tuple(rule for rule in rules if rule is not None)
