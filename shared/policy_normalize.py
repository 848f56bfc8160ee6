"""Normalization for the content policy: any Unicode prompt to the canonical words its term lists match.

``normalize`` is the public form (``shared.policy`` re-exports it; ``shared/policy_terms.py`` is written in
it). ``shared.policy`` also builds its other views from the steps here: ``fold_unicode`` once per text, then
``canonical_tokens`` with stars kept or ages split, and the repeated-letter collapses. Every regex here is
compiled once at import and has no nested unbounded quantifier, so each step is linear in the text's length.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

__all__ = ["canonical_tokens", "collapse_to_one", "collapse_to_two", "fold_unicode", "normalize"]

# Look-alike letters from other scripts, applied after NFKD so accented variants ("ё", "ї") are covered
# by their base letter. Only letters that are visually confusable with a Latin letter belong here.
_CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "б": "b", "в": "b", "г": "r", "д": "d", "е": "e", "ж": "x", "и": "u", "к": "k",
    "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x",
    "ш": "w", "щ": "w", "ъ": "b", "ь": "b", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y", "ѵ": "v",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u",
    "ν": "v", "ο": "o", "π": "n", "ρ": "p", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    "ϲ": "c", "ϳ": "j",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g",
    # Latin letters that NFKD does not decompose
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ʏ": "y", "ø": "o", "đ": "d", "ł": "l", "ħ": "h",
    "ŧ": "t", "æ": "ae", "œ": "oe",
}  # fmt: skip


def _build_unicode_table() -> dict[int, str | None]:
    """Translation table: drop format/combining characters, fold confusables.

    Format characters (zero-width space, soft hyphen, joiners, tag characters) are deleted rather than
    turned into separators, because their only use in a prompt is to split a word invisibly.
    """
    table: dict[int, str | None] = {}
    for cp in itertools.chain(range(0x30000), range(0xE0000, 0xE1000)):
        if unicodedata.category(chr(cp)) in ("Cf", "Mn", "Me"):
            table[cp] = None
    for src, dst in _CONFUSABLES.items():
        table[ord(src)] = dst
    return table


_UNICODE_TABLE = _build_unicode_table()

# Leetspeak, applied only to tokens that also contain a letter, so "1990" or "18" stay numbers.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                       "!": "i", "|": "i", "*": None})  # fmt: skip
# Same, but "*" survives so "r*pe" can be resolved against the term lists (see shared.policy._views).
_LEET_KEEP_STAR = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                                 "$": "s", "!": "i", "|": "i"})  # fmt: skip

_NON_TOKEN = re.compile(r"[^a-z0-9@$!|*]+")
# "c.h.i.l.d s.e.x": single characters joined by one repeated punctuation mark are glued before spaces
# are considered, so the space between two such runs still separates words. The double lookbehind lets
# a match start only at the beginning of a run, keeping the scan linear.
_PUNCT_RUN = re.compile(
    r"(?<![a-z0-9@$])(?<![a-z0-9@$][._-])[a-z0-9@$]([._-])[a-z0-9@$](?:\1[a-z0-9@$])*+(?![a-z0-9@$])"
)
_HAS_LETTER = re.compile(r"[a-z]")
_NON_DIGIT = re.compile(r"[^0-9]+")
# Anchored to a token start (the lookbehind) so a long token is scanned once, not once per position.
# Only tokens with a symbol, or with digits next to letters, can change; pure words and pure numbers are
# already canonical and are skipped without a Python callback.
_TOKEN_WITH_SPECIAL = re.compile(r"(?<![^ ])[^ ]*?(?:[@$!|*]|[0-9][a-z]|[a-z][0-9])[^ ]*+")
_SINGLE_CHAR_RUN = re.compile(r"(?<![^ ])[^ ](?: [^ ])+(?![^ ])")
# Age view: digits break runs, so "a 9 y o" keeps its "9" instead of becoming "a9yo".
_SINGLE_LETTER_RUN = re.compile(r"(?<![^ ])[a-z@$](?: [a-z@$])+(?![^ ])")
_LONE_SYMBOL = re.compile(r"(?<![^ ])[@$](?![^ ])")
_DIGIT_PREFIX = re.compile(r"(?<![^ ])([0-9]++)(?=[a-z])")
_REPEAT_3 = re.compile(r"([a-z])\1\1+")
_REPEAT_2 = re.compile(r"([a-z])\1+")


def fold_unicode(text: str) -> str:
    """Reduce arbitrary Unicode to space-separated runs of ``[a-z0-9@$!|*]``.

    NFKC first so fullwidth and mathematical letters become ASCII, casefold for case and "ß", then NFKD
    so accents can be dropped as combining marks ("nüde" -> "nude").
    """
    if text.isascii():
        folded = text.lower()
    else:
        folded = unicodedata.normalize("NFKC", text).casefold()
        folded = unicodedata.normalize("NFKD", folded).translate(_UNICODE_TABLE)
    if "." in folded or "-" in folded or "_" in folded:
        folded = _PUNCT_RUN.sub(lambda m: m.group().replace(m.group(1), ""), folded)
    return _NON_TOKEN.sub(" ", folded).strip()


def canonical_tokens(folded: str, *, keep_stars: bool, split_ages: bool) -> str:
    """Turn folded text into canonical tokens: leetspeak undone, spaced-out letters joined, repeats cut.

    Every step only ever shortens or merges tokens in a way the next pass reproduces exactly, which is
    what makes ``normalize`` idempotent: the output alphabet is ``[a-z0-9 ]`` (plus ``*`` when
    ``keep_stars``), leet digits only remain in digit-only tokens, and no run of two or more
    single-character tokens containing a letter survives.
    """
    leet = _LEET_KEEP_STAR if keep_stars else _LEET
    if split_ages:
        # "15yo" -> "15 yo": without this the digits would be read as leetspeak ("isyo").
        folded = _DIGIT_PREFIX.sub(r"\1 ", folded)

    def canon(match: re.Match[str]) -> str:
        token = match.group().strip("!|*")
        if _HAS_LETTER.search(token):
            return token.translate(leet)
        if token in ("@", "$"):
            # Could be a letter in a spaced-out word ("r @ p e"); decided when joining runs.
            return token
        return _NON_DIGIT.sub("", token)

    text = " ".join(_TOKEN_WITH_SPECIAL.sub(canon, folded).split())

    def join_run(match: re.Match[str]) -> str:
        parts = match.group().split(" ")
        if any(part.isalpha() for part in parts):
            return "".join(parts).translate(leet)
        return " ".join(part for part in parts if part not in ("@", "$"))

    text = (_SINGLE_LETTER_RUN if split_ages else _SINGLE_CHAR_RUN).sub(join_run, text)
    if "@" in text or "$" in text:
        text = _LONE_SYMBOL.sub("", text)
    text = " ".join(text.split())
    # Collapse to two, not one: "teeeen" must stay "teen" and "naked" must not become "naked" minus a
    # letter. The single-letter form is checked separately in shared.policy._views.
    return collapse_to_two(text)


def normalize(text: str) -> str:
    """Return the canonical matching form of ``text``: lowercase ASCII words separated by single spaces.

    Applies NFKC, casefolding, removal of zero-width/format characters, folding of Cyrillic/Greek
    look-alikes, leetspeak inside words ("n@k3d" -> "naked", while "18" stays "18"), joining of
    spaced-out letters ("s e x", "r.a.p.e") and collapsing of letters repeated three or more times to
    two. The function is idempotent, so callers may normalize already-normalized text safely.

    Digits glued to letters are read as leetspeak here ("15yo" -> "isyo"); age detection therefore uses a
    separate view that keeps such digits (see ``shared.policy._views``).
    """
    return canonical_tokens(fold_unicode(text), keep_stars=False, split_ages=False)


def collapse_to_two(text: str) -> str:
    return _REPEAT_3.sub(r"\1\1", text)


def collapse_to_one(text: str) -> str:
    return _REPEAT_2.sub(r"\1", text)
