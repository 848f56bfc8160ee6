"""Content policy for prompts: hard blocks everywhere, explicit-content softening on moderated paths.

Three entry points share one classifier:

* ``evaluate_private_chat``: unmoderated 1:1 chat. Only hard-block categories are refused; explicit
  adult content between consenting adults passes unchanged.
* ``sanitize_general``: moderated endpoints. Hard blocks are refused; explicit prompts are kept but get
  ``SAFETY_SUFFIX`` appended so the image model is steered to a safe-for-work result.
* ``check_expanded_prompt``: the interface runs this on every LLM-expanded prompt before it reaches an
  image worker, because the LLM can introduce terms the user never typed.

Matching is word based on a normalized copy of the text (see ``normalize``, in
``shared/policy_normalize.py``), so "grape", "therapist" or "Sussex" never trip "rape", "rapist" or "sex",
while "r.a.p.e", "n@ked" or Cyrillic look-alikes do. All regexes are compiled once at import and are free of
nested unbounded quantifiers, so judging a prompt is linear in its length.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared import policy_terms as terms
from shared.policy_normalize import (
    canonical_tokens,
    collapse_to_one,
    collapse_to_two,
    fold_unicode,
    normalize,
)

__all__ = [
    "HARD_BLOCK_CATEGORIES",
    "SAFETY_SUFFIX",
    "SOFT_BLOCK_CATEGORIES",
    "PolicyDecision",
    "check_expanded_prompt",
    "decide_off_loop",
    "evaluate_private_chat",
    "normalize",
    "sanitize_general",
]

# Order matters: when a prompt hits several hard categories the first one is reported.
HARD_BLOCK_CATEGORIES: tuple[str, ...] = (
    terms.CATEGORY_MINORS,
    terms.CATEGORY_SEXUAL_VIOLENCE,
    terms.CATEGORY_BESTIALITY,
)
SOFT_BLOCK_CATEGORIES: tuple[str, ...] = (terms.CATEGORY_EXPLICIT,)

SAFETY_SUFFIX = ", fully clothed, modest clothing, no nudity, safe for work"

# Reasons name the category in plain words and never quote the user's text, so they are safe to show
# and to log.
_REASONS: dict[str, str] = {
    terms.CATEGORY_MINORS: "content involving minors is not allowed",
    terms.CATEGORY_SEXUAL_VIOLENCE: "content depicting abuse or lack of consent is not allowed",
    terms.CATEGORY_BESTIALITY: "content depicting intimacy with animals is not allowed",
    terms.CATEGORY_EXPLICIT: "adult content is not allowed here; safety constraints were added to the prompt",
}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Outcome of a policy check.

    ``prompt`` is what may be sent downstream: empty when blocked (so a caller that forgets to check
    ``blocked`` still cannot forward the text), the stripped original otherwise, plus ``SAFETY_SUFFIX``
    when ``soft_blocked``.
    """

    blocked: bool
    category: str | None
    prompt: str
    soft_blocked: bool
    reason: str | None


# --------------------------------------------------------------------------------------------------
# Pattern compilation
# --------------------------------------------------------------------------------------------------

# Single-letter forms of terms that collide with everyday words; they are matched only in the
# two-letter view ("teen" must not match "ten", "boobs" must not match "bobs").
_COLLAPSE_COLLISIONS: frozenset[str] = frozenset({"ten", "tens", "bobs", "kidie", "kidies", "striping"})


def _expand_terms(words: Iterable[str]) -> list[str]:
    """Add the single-letter form of each term so "nuude" (-> "nude") and "pusy" are also found."""
    out: set[str] = set()
    for word in words:
        out.add(word)
        single = collapse_to_one(word)
        # Very short collapsed forms ("x" from "xx") are ordinary letters, not obfuscations.
        if len(single) >= 3 and single not in _COLLAPSE_COLLISIONS:
            out.add(single)
    return sorted(out)


def _trie_pattern(words: Iterable[str]) -> str:
    """Build a prefix-factored alternation so matching costs O(term length) per position.

    A flat alternation of a few hundred terms would be retried branch by branch at every offset.
    """
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        ends_here = "" in node
        if len(branches) == 1 and not ends_here:
            return branches[0]
        group = "(?:" + "|".join(branches) + ")"
        return group + "?" if ends_here else group

    return build(trie)


def _words(words: Iterable[str]) -> str:
    """Pattern for any of ``words`` as whole words (views contain only ``[a-z0-9 ~]``, so ``\\b`` fits)."""
    return r"\b" + _trie_pattern(_expand_terms(words)) + r"\b"


def _first_words(words: Iterable[str]) -> frozenset[str]:
    return frozenset(term.split(" ", 1)[0] for term in _expand_terms(words))


@dataclass(frozen=True, slots=True)
class _Rule:
    """A compiled pattern plus cheap preconditions.

    Every match of ``pattern`` starts with (or contains) a whole word from each set in ``gates``, so when a
    view's word set misses one of them the regex cannot match and is skipped. Most prompts contain no
    listed word at all, which makes this the common path.
    """

    pattern: re.Pattern[str]
    gates: tuple[frozenset[str], ...]

    def search(self, views: tuple[_View, ...]) -> bool:
        return any(
            all(not gate.isdisjoint(view.tokens) for gate in self.gates) and self.pattern.search(view.text)
            for view in views
        )


def _rule(*groups: Iterable[str]) -> _Rule:
    words = list(itertools.chain.from_iterable(groups))
    return _Rule(re.compile(_words(words)), (_first_words(words),))


_BENIGN = _rule(terms.BENIGN_PHRASES)
_MINOR = _rule(terms.MINOR_TERMS)
_MINOR_INTRINSIC = _rule(terms.MINOR_INTRINSIC_TERMS)
_SEXUAL_ANY = _rule(terms.EXPLICIT_TERMS, terms.SEXUAL_ACT_TERMS, terms.SEXUALIZING_TERMS)
_EXPLICIT = _rule(terms.EXPLICIT_TERMS, terms.SEXUAL_ACT_TERMS)
_SV = _rule(terms.SEXUAL_VIOLENCE_TERMS)
_COERCION = _rule(terms.COERCION_TERMS)
_BESTIALITY = _rule(terms.BESTIALITY_TERMS)

_ACT = _words(terms.SEXUAL_ACT_TERMS)
_NEAR = _words(terms.INCAPACITATION_NEAR_TERMS)
_ANIMAL = _words(terms.ANIMAL_TERMS)
_ACT_GATE = _first_words(terms.SEXUAL_ACT_TERMS)
# Possessive "[^ ]++" so a long token between the two terms is consumed once, never re-split.
_GAP = rf"(?: [^ ]++){{0,{terms.NEAR_WINDOW_WORDS}}}? "
_NEAR_ACT = _Rule(
    re.compile(rf"{_NEAR}{_GAP}{_ACT}|{_ACT}{_GAP}{_NEAR}"),
    (_first_words(terms.INCAPACITATION_NEAR_TERMS), _ACT_GATE),
)
_DETERMINER = r"(?:a|an|the|her|his|my|their|some|two|three) "
_BESTIALITY_PHRASE = _Rule(
    re.compile(
        rf"{_ACT} (?:with|by) (?:{_DETERMINER})?(?:[^ ]++ )?{_ANIMAL}"
        rf"|{_ACT} {_DETERMINER}(?:[^ ]++ )?{_ANIMAL}"
        rf"|{_ANIMAL} (?:is |was )?(?:fucking|fucks|fucked|penetrating|penetrates|raping|rapes|raped|humping"
        r"|having sex|has sex)\b"
    ),
    (_first_words(terms.ANIMAL_TERMS),),
)

_AGE_WORDS = "|".join(terms.MINOR_AGE_WORDS)
_AGE_SUFFIX = r"(?:yo|yr old|yrs old|year old|years old|year of age|years of age)"
_WORD_AGE = _Rule(
    re.compile(rf"\b(?:{_AGE_WORDS}) {_AGE_SUFFIX}\b|\b(?:age|aged) (?:{_AGE_WORDS})\b"),
    (frozenset(terms.MINOR_AGE_WORDS),),
)
# Digits are bounded ({1,3}) so int() never sees a huge number and no match spans a long digit run.
_DIGIT_AGE_RE = re.compile(
    rf"\b([0-9]{{1,3}}) {_AGE_SUFFIX}\b"
    r"|\b(?:age|aged|ages) ([0-9]{1,3})\b"
    r"|\b([0-9]{1,2}) (?:st|nd|rd|th) grade(?:r|rs)?\b"
)
_DIGIT_UNDER_RE = re.compile(r"\b(?:under|below|younger than) ([0-9]{1,2})\b")
_MAX_GRADE = 12


def _build_star_map() -> dict[str, str]:
    """Map censored spellings ("r*pe", "f**k") to the term they hide.

    Only interior letters may be starred and at least two letters must remain visible, so a lone "s**"
    does not stand for anything.
    """
    mapping: dict[str, str] = {}
    groups = (
        terms.SEXUAL_VIOLENCE_TERMS,
        terms.BESTIALITY_TERMS,
        terms.MINOR_INTRINSIC_TERMS,
        terms.MINOR_TERMS,
        terms.SEXUAL_ACT_TERMS,
        terms.EXPLICIT_TERMS,
        terms.SEXUALIZING_TERMS,
    )
    for word in itertools.chain.from_iterable(groups):
        if " " in word or len(word) < 3 or len(word) > 12:
            continue
        interior = range(1, len(word) - 1)
        for count in range(1, len(word) - 1):
            for positions in itertools.combinations(interior, count):
                chars = list(word)
                for pos in positions:
                    chars[pos] = "*"
                mapping.setdefault("".join(chars), word)
    return mapping


_STAR_MAP = _build_star_map()
_STARRED_TOKEN = re.compile(r"[^ ]*\*[^ ]*+")


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


_DIGIT = re.compile(r"[0-9]")


@dataclass(frozen=True, slots=True)
class _View:
    """One normalized form of the text and the set of its words (for _Rule gates)."""

    text: str
    tokens: frozenset[str]


def _view(text: str) -> _View:
    return _View(text, frozenset(text.split(" ")))


@dataclass(frozen=True, slots=True)
class _Views:
    """The normalized forms a text is judged on.

    ``words`` holds the two-letter view, its single-letter collapse and, if the text had ``*``, a view
    with censored words resolved; benign phrases are masked in all of them. ``ages()`` keeps digits that
    touch letters as digits ("15yo" -> "15 yo"), because in ``words`` they were read as leetspeak and a
    real age must never be lost to that.
    """

    words: tuple[_View, ...]
    folded: str

    def ages(self) -> str | None:
        """The age view, built on demand: it is only needed once a sexual term was found."""
        if _DIGIT.search(self.folded) is None:
            return None
        return _mask(canonical_tokens(self.folded, keep_stars=False, split_ages=True)).text


def _mask(text: str) -> _View:
    view = _view(text)
    if not _BENIGN.gates[0].isdisjoint(view.tokens):
        view = _view(_BENIGN.pattern.sub("~", text))
    return view


def _views(text: str) -> _Views:
    folded = fold_unicode(text)
    resolved = None
    if "*" in folded:
        starred = canonical_tokens(folded, keep_stars=True, split_ages=False)
        resolved = _STARRED_TOKEN.sub(lambda m: _STAR_MAP.get(m.group(), m.group().replace("*", "")), starred)
        # Same result as normalize(text) (stars only ever sit between letters), one pass cheaper.
        two = collapse_to_two(starred.replace("*", ""))
    else:
        two = canonical_tokens(folded, keep_stars=False, split_ages=False)
    candidates = [two, collapse_to_one(two)]
    if resolved is not None:
        candidates.append(resolved)
    words = tuple(_mask(text) for text in dict.fromkeys(candidates))
    return _Views(words=words, folded=folded)


def _mentions_minor(views: _Views) -> bool:
    if _MINOR.search(views.words) or _WORD_AGE.search(views.words):
        return True
    ages = views.ages()
    if ages is None:
        return False
    for match in _DIGIT_AGE_RE.finditer(ages):
        age, aged, grade = match.groups()
        if grade is not None:
            if 0 < int(grade) <= _MAX_GRADE:
                return True
        elif int(age if age is not None else aged) <= terms.MAX_MINOR_AGE:
            return True
    return any(int(m.group(1)) <= terms.MAX_MINOR_AGE + 1 for m in _DIGIT_UNDER_RE.finditer(ages))


def _hard_category(views: _Views) -> str | None:
    """Return the first hard-block category the text falls into, or None."""
    words = views.words
    if _MINOR_INTRINSIC.search(words) or (_SEXUAL_ANY.search(words) and _mentions_minor(views)):
        return terms.CATEGORY_MINORS
    if _SV.search(words) or (_COERCION.search(words) and _EXPLICIT.search(words)) or _NEAR_ACT.search(words):
        return terms.CATEGORY_SEXUAL_VIOLENCE
    if _BESTIALITY.search(words) or _BESTIALITY_PHRASE.search(words):
        return terms.CATEGORY_BESTIALITY
    return None


def _blocked(category: str) -> PolicyDecision:
    return PolicyDecision(blocked=True, category=category, prompt="", soft_blocked=False,
                          reason=_REASONS[category])  # fmt: skip


def _strip_suffix(text: str) -> str:
    """Drop a SAFETY_SUFFIX we appended earlier, so re-checking our own output is stable."""
    return text[: -len(SAFETY_SUFFIX)] if text.endswith(SAFETY_SUFFIX) else text


def _decide(text: str, *, moderated: bool) -> PolicyDecision:
    prompt = text.strip()
    views = _views(_strip_suffix(prompt))
    category = _hard_category(views)
    if category is not None:
        return _blocked(category)
    if moderated and _EXPLICIT.search(views.words):
        safe = prompt if prompt.endswith(SAFETY_SUFFIX) else prompt + SAFETY_SUFFIX
        return PolicyDecision(blocked=False, category=terms.CATEGORY_EXPLICIT, prompt=safe, soft_blocked=True,
                              reason=_REASONS[terms.CATEGORY_EXPLICIT])  # fmt: skip
    return PolicyDecision(blocked=False, category=None, prompt=prompt, soft_blocked=False, reason=None)


def evaluate_private_chat(text: str) -> PolicyDecision:
    """Judge a message in an unmoderated 1:1 private chat.

    Adults may ask for explicit content here, so only the hard-block categories are refused; everything
    else passes unchanged (stripped of surrounding whitespace).
    """
    return _decide(text, moderated=False)


def sanitize_general(text: str) -> PolicyDecision:
    """Judge a prompt for a general (moderated) endpoint.

    Hard-block categories are refused. Explicit prompts are not refused, since the user's intent is
    usually recoverable: the original text is kept and ``SAFETY_SUFFIX`` steers the image model to a
    safe-for-work rendering.
    """
    return _decide(text, moderated=True)


def check_expanded_prompt(prompt: str, *, moderated: bool) -> PolicyDecision:
    """Re-check a prompt after LLM expansion, right before it is sent to an image worker.

    The LLM may add terms the user never typed, so the user-input check alone is not enough. Hard blocks
    always apply; ``moderated`` selects the soft-block behaviour of ``sanitize_general`` versus the
    pass-through of ``evaluate_private_chat``.
    """
    return _decide(prompt, moderated=moderated)


# A check costs about a millisecond per 2,000 characters: past this length it runs in a thread, so a long
# prompt never holds an event loop; below it the thread hop would cost more than the check.
INLINE_CHARS = 200


async def decide_off_loop(check: Callable[[str], PolicyDecision], text: str) -> PolicyDecision:
    """Run one of the checks above from async code, off the event loop when the text is long."""
    if len(text) <= INLINE_CHARS:
        return check(text)
    return await asyncio.to_thread(check, text)
