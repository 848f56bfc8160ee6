"""The policy's rules, compiled once at import from the term files: which lists combine into which block.

* minors: a ``minor_intrinsic`` term; or a minor (a ``minor`` term or a stated age under 18) together
  with an ``explicit``, ``sexual_act`` or ``sexualizing`` term, in any languages; or a ``*_local`` term
  together with a term of its own file (or with any, when spelled with its accents: "niña", not "nina").
* sexual violence: a ``sexual_violence`` term; ``coercion`` with an explicit or sexual-act term; a
  ``near_act`` term within ``near_window`` words of a sexual act.
* bestiality: a ``bestiality`` term, or a sexual act phrased with an animal ("sex with a dog").
* explicit (covered on moderated routes): an ``explicit`` or ``sexual_act`` term, local ones included:
  coverage on a prompt about a knot (Spanish "nudo") costs a clause, a missed "uomo nudo" would cost more.
* suggestive (covered on moderated routes when nothing explicit is there): a ``sexualizing`` term; a local
  one only with its accents, since a neutral prompt must pass unchanged (pt "despida" is Spanish for "say
  goodbye"), and a suggestive prompt without coverage still meets the guard model and the pixel check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.policy.ages import AgeRule, age_rules
from shared.policy.lexicon import LANGUAGES, Language
from shared.policy.match import Gate, TermGroup, Views, gate, latin_pattern, latin_terms, term_group

__all__ = [
    "BESTIALITY",
    "BESTIALITY_PHRASE",
    "COERCION",
    "EXPLICIT",
    "INTRINSIC",
    "MINOR",
    "NEAR_ACT",
    "SEXUALIZING",
    "SEXUAL_ANY",
    "SEXUAL_VIOLENCE",
    "PhraseRule",
    "has_local_pair",
    "mentions_minor",
    "states_minor_age",
]

_SEXUAL = ("explicit", "sexual_act", "sexualizing")
_SEXUAL_LOCAL = ("explicit_local", "sexual_act_local", "sexualizing_local")

MINOR = term_group("minor", accented=["minor_local"])
INTRINSIC = term_group("minor_intrinsic")
SEXUAL_ANY = term_group(*_SEXUAL, accented=_SEXUAL_LOCAL)
EXPLICIT = term_group("explicit", "sexual_act", "explicit_local", "sexual_act_local")
SEXUALIZING = term_group("sexualizing", accented=["sexualizing_local"])
SEXUAL_VIOLENCE = term_group("sexual_violence")
COERCION = term_group("coercion")
BESTIALITY = term_group("bestiality")
_AGES = age_rules()
_HAS_DIGIT = re.compile("[0-9]")


@dataclass(frozen=True, slots=True)
class PhraseRule:
    """A Latin-view regex over several lists, run only when every gate has a word in the view."""

    pattern: re.Pattern[str]
    gates: tuple[Gate, ...]

    def search(self, views: Views) -> bool:
        return any(
            all(gate.admits(view.tokens) for gate in self.gates) and self.pattern.search(view.text)
            for view in views.latin
        )


def _alt(*groups: str) -> str:
    words = latin_terms(groups)
    if not words:  # an empty trie would match everywhere
        raise RuntimeError(f"the term files define no {'/'.join(groups)} words")
    return latin_pattern(words)


def _near_act() -> PhraseRule:
    window = max(lang.near_window for lang in LANGUAGES)
    act, near = _alt("sexual_act"), _alt("near_act")
    # Possessive "[^ ]++" so a long token between the two terms is consumed once, never re-split.
    gap = rf"(?: [^ ]++){{0,{window}}}? "
    return PhraseRule(
        re.compile(rf"{near}{gap}{act}|{act}{gap}{near}"),
        (gate(latin_terms(["near_act"])), gate(latin_terms(["sexual_act"]))),
    )


def _bestiality_phrase() -> PhraseRule:
    act, animal = _alt("sexual_act"), _alt("animals")
    prep, det = _alt("animal_prepositions"), _alt("determiners")
    links, animal_acts = _alt("animal_act_links"), _alt("animal_acts")
    return PhraseRule(
        re.compile(
            rf"{act} {prep} (?:{det} )?(?:[^ ]++ )?{animal}"
            rf"|{act} {det} (?:[^ ]++ )?{animal}"
            rf"|{animal} (?:{links} )?{animal_acts}"
        ),
        (gate(latin_terms(["animals"])),),
    )


NEAR_ACT = _near_act()
BESTIALITY_PHRASE = _bestiality_phrase()


def mentions_minor(views: Views) -> bool:
    """A minor term, or an age under 18 stated in any language's way of writing one."""
    return MINOR.search(views) or states_minor_age(views)


def _anchor_index(rules: tuple[AgeRule, ...]) -> dict[str, tuple[int, ...]]:
    index: dict[str, list[int]] = {}
    for number, rule in enumerate(rules):
        for anchor in rule.anchors:
            index.setdefault(anchor, []).append(number)
    return {anchor: tuple(numbers) for anchor, numbers in index.items()}


_LATIN_AGES = tuple(rule for rule in _AGES if not rule.on_script)
_SCRIPT_AGES = tuple(rule for rule in _AGES if rule.on_script)
# Which languages' rules an anchor word ("year", "años", "girl") can start: a text is checked only
# against the rules whose anchors it holds, one set intersection instead of a loop over every language.
_ANCHORS = _anchor_index(_LATIN_AGES)
_ALL_ANCHORS = frozenset(_ANCHORS)


def states_minor_age(views: Views) -> bool:
    """An age under 18 written in any language's way ("12 year old", "she is 13", "doce años", "12歳")."""
    # The age views (digits kept apart from letters) hold every age the word views do.
    for text in views.ages():
        parts = frozenset(text.split(" "))
        found = _ALL_ANCHORS.intersection(parts)
        if found:
            has_digit = _HAS_DIGIT.search(text) is not None
            numbers = {number for anchor in found for number in _ANCHORS[anchor]}
            if any(_LATIN_AGES[number].find(text, parts, has_digit) for number in numbers):
                return True
    script = views.script
    if script is not None and _SCRIPT_AGES:
        chars, has_digit = frozenset(script), _HAS_DIGIT.search(script) is not None
        return any(rule.find(script, chars, has_digit) for rule in _SCRIPT_AGES)
    return False


@dataclass(frozen=True, slots=True)
class _LocalPair:
    """One language's local words and what they pair with: only terms of the same file (and ages)."""

    minor_local: TermGroup
    sexual_local: TermGroup
    minor_all: TermGroup
    sexual_all: TermGroup

    def search(self, views: Views) -> bool:
        if self.minor_local.search(views) and self.sexual_all.search(views):
            return True
        return self.sexual_local.search(views) and (self.minor_all.search(views) or states_minor_age(views))


def _local_pair(lang: Language) -> _LocalPair:
    only = (lang,)
    return _LocalPair(
        minor_local=term_group("minor_local", languages=only),
        sexual_local=term_group(*_SEXUAL_LOCAL, languages=only),
        minor_all=term_group("minor", "minor_local", languages=only),
        sexual_all=term_group(*_SEXUAL, *_SEXUAL_LOCAL, languages=only),
    )


_LOCAL_PAIRS = tuple(
    _local_pair(lang)
    for lang in LANGUAGES
    if any(lang.terms(group) for group in ("minor_local", *_SEXUAL_LOCAL))
)
# Every local word of every file: most prompts hold none, and then no pair needs a look.
_ANY_LOCAL = term_group("minor_local", *_SEXUAL_LOCAL)


def has_local_pair(views: Views) -> bool:
    return _ANY_LOCAL.search(views) and any(pair.search(views) for pair in _LOCAL_PAIRS)
