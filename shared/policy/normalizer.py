"""Normalisation: any Unicode prompt to the forms the term lists are matched on.

Terms go through the same functions (``shared.policy.match`` calls ``term_form``), so a term and a prompt
always meet in the same form. Two kinds of view come out:

* Latin views: words of ``[a-z0-9]`` separated by single spaces. ``fold_text`` reduces Latin, Greek and
  Cyrillic letters to them twice when the text has Cyrillic: folded to the Latin letters they look like
  ("ѕеху" -> "sexy", English in disguise) and transliterated ("голая" -> "golaya", Russian; Latin
  look-alikes inside a Cyrillic word are read as Cyrillic first). ``canonical_tokens`` then undoes
  leetspeak, joins spaced-out letters and cuts repeated letters.
* The script view, only for text in other scripts (Arabic, Devanagari, Han, kana, Hangul, ...): words of
  letters and marks, with the term files' character folds (Arabic letter variants, the Devanagari nukta,
  traditional Chinese forms), katakana read as hiragana and every digit as ASCII.

In both, letters spaced out one by one are joined ("n u d e"), while a gap of two or more spaces is a word
break, so "n u d e   c h i l d" is two words. Every regex is compiled once at import and has no nested
unbounded quantifier, so each step is linear in the text's length.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from shared.policy.lexicon import LANGUAGES

__all__ = [
    "DENSE_CHARS",
    "ONE_IN_WORD",
    "FoldedText",
    "canonical_tokens",
    "collapse_to_one",
    "collapse_to_two",
    "fold_text",
    "normalize",
    "term_form",
]

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

# Cyrillic to Latin, after NFKD (so "ё" and "й" arrive as "е" and "и"). One fixed scheme: the Russian
# term file goes through it too, so only self-consistency matters.
_TRANSLIT: dict[str, str] = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ж": "zh", "з": "z", "и": "i", "к": "k",
    "л": "l", "м": "m", "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f",
    "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "ь": "", "э": "e",
    "ю": "yu", "я": "ya", "і": "i", "є": "e", "ґ": "g", "ў": "u", "ј": "j", "ѕ": "dz",
}  # fmt: skip
# Inside a word that has Cyrillic letters, a Latin letter is a look-alike standing in for a Cyrillic one.
_LATIN_IN_CYRILLIC = str.maketrans({
    "a": "а", "b": "в", "c": "с", "e": "е", "h": "н", "k": "к", "m": "м", "n": "п", "o": "о", "p": "р",
    "r": "г", "t": "т", "u": "и", "x": "х", "y": "у", "@": "а",
})  # fmt: skip
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# A word holding a Cyrillic letter. Anchored to a word start and possessive, so each word is read once.
# A word mixing Latin and Cyrillic letters (marks may follow a letter after NFKD). Anchored to a word start
# and possessive, so each word is read once; pure words of either script never reach the callback.
_CYRILLIC_WORD = re.compile(
    r"(?<![a-z@\u0400-\u04ff\u0300-\u036f])"
    r"(?:[a-z@]++[\u0400-\u04ff]|[\u0400-\u04ff\u0300-\u036f]++[a-z@])[a-z@\u0400-\u04ff\u0300-\u036f]*+"
)
# Spaced or dotted Cyrillic letters ("г о л а я"), joined before transliteration: afterwards "я" is two
# letters ("ya") and the run would no longer be one of single letters. The separator must repeat exactly,
# so a wide gap still ends the run; marks (NFKD) may follow each letter.
_CYR = r"[\u0400-\u04ff][\u0300-\u036f]*+"
_CYRILLIC_RUN = re.compile(rf"(?<![\w\u0300-\u036f]){_CYR}([ ._-]){_CYR}(?:\1{_CYR})*+(?![\w\u0300-\u036f])")

# Scripts without spaces between words (Han, kana, Hangul): their terms are matched as substrings.
_DENSE_RANGES = "\u1100-\u11ff\u3040-\u30ff\u3131-\u318e\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
DENSE_CHARS = re.compile(f"[{_DENSE_RANGES}]")
# Letters of scripts other than Latin, Greek and Cyrillic (emoji and symbols excluded), after NFKC.
_OTHER_SCRIPT = re.compile(
    "[\u0530-\u1cff\u2e80-\ua63f\ua6a0-\ua71f\ua800-\ud7ff\uf900-\ufaff\ufb1d-\ufdff\ufe70-\ufefe"
    "\U00010000-\U0001efff\U00020000-\U0003ffff]"
)
_SEPARATOR = "\x1f"  # stands for punctuation in the script view until gaps are measured


def _build_tables() -> tuple[dict[int, str | None], dict[int, str | None], dict[int, str | None]]:
    """Translation tables for the look-alike fold, the transliterating fold and the script view.

    Format characters (zero-width space, soft hyphen, joiners, tag characters) are deleted rather than
    turned into separators, because their only use in a prompt is to split a word invisibly. Marks are
    dropped for the Latin folds (accents) but kept in the script view, where they are vowels
    (Devanagari); the term files' folds decide which marks go there.
    """
    latin: dict[int, str | None] = {}
    script: dict[int, str | None] = {}
    # The CJK ideograph and Hangul syllable blocks hold only letters (or nothing yet), which need no
    # entry: skipping them halves the import-time scan.
    # Tag characters (U+E0000 block) are format characters too.
    code_points = itertools.chain(
        range(0x3400), range(0x4DC0, 0x4E00), range(0xA000, 0xAC00), range(0xD7B0, 0x20000),
        range(0xE0000, 0xE1000),
    )  # fmt: skip
    for cp in code_points:
        ch = chr(cp)
        category = unicodedata.category(ch)
        if category == "Cf":
            latin[cp] = script[cp] = None
        elif category in ("Mn", "Me"):
            latin[cp] = None
        elif category == "Nd" and cp > 0x7F:
            latin[cp] = script[cp] = str(unicodedata.digit(ch))
        elif category[0] in "PS" or category == "Co":
            script[cp] = _SEPARATOR
        elif category[0] == "Z" or category == "Cc":
            script[cp] = " "
    for src, dst in _CONFUSABLES.items():
        latin[ord(src)] = dst
    translit = dict(latin)
    for src, dst in _TRANSLIT.items():
        translit[ord(src)] = dst
    for cp in range(0x30A1, 0x30F7):  # katakana -> hiragana
        script[cp] = chr(cp - 0x60)
    for language in LANGUAGES:
        for src, dst in language.fold.items():
            script[ord(src)] = dst
    return latin, translit, script


_LATIN_TABLE, _TRANSLIT_TABLE, _SCRIPT_TABLE = _build_tables()

# Leetspeak, applied only to tokens that also contain a letter, so "1990" or "18" stay numbers.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                       "!": "i", "|": "i", "*": None})  # fmt: skip
# "1" also stands for "l" ("lo1i"); that reading is a view of its own, built only when a word holds a "1".
_LEET_ONE_AS_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                                "$": "s", "!": "i", "|": "i", "*": None})  # fmt: skip
ONE_IN_WORD = re.compile(r"[a-z]1|1[a-z]")
# Same as _LEET, but "*" survives so "r*pe" can be resolved against the term lists (shared.policy.match).
_LEET_KEEP_STAR = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                                 "$": "s", "!": "i", "|": "i"})  # fmt: skip

_NON_TOKEN = re.compile(r"[^a-z0-9@$!|*]+")
# A gap holding two whitespace characters: a word break that spaced-out letters do not cross
# ("n u d e   c h i l d", "n u d e / c h i l d"). Anchored to the gap's start, so each gap is read once.
_WIDE_GAP = re.compile(r"(?<![^a-z0-9@$!|*])[^a-z0-9@$!|*\s]*+\s[^a-z0-9@$!|*\s]*+\s[^a-z0-9@$!|*]*+")
_MAYBE_WIDE = re.compile(r"\s[^a-z0-9@$!|*\s]*+\s")
# "c.h.i.l.d s.e.x": single characters joined by one repeated punctuation mark are glued before spaces
# are considered, so the space between two such runs still separates words. The double lookbehind lets
# a match start only at the beginning of a run, keeping the scan linear.
_PUNCT_RUN = re.compile(
    r"(?<![a-z0-9@$])(?<![a-z0-9@$][._-])[a-z0-9@$]([._-])[a-z0-9@$](?:\1[a-z0-9@$])*+(?![a-z0-9@$])"
)
_HAS_LETTER = re.compile(r"[a-z]")
_NON_DIGIT = re.compile(r"[^0-9]+")


@dataclass(frozen=True, slots=True)
class _Passes:
    """The token passes of ``canonical_tokens`` for one kind of separator.

    Text without a wide gap (nearly every prompt) takes the ``_NARROW`` passes, whose ``[^ ]`` classes are
    the regex engine's fastest; text with one takes ``_WIDE``, where "\\t" marks a wide gap.
    """

    # Anchored to a token start (the lookbehind) so a long token is scanned once, not once per position.
    # Only tokens with a symbol, or with digits next to letters, can change; pure words and pure numbers
    # are already canonical and are skipped without a Python callback.
    token_with_special: re.Pattern[str]
    # Runs of one-character tokens ("s e x").
    char_run: re.Pattern[str]
    # Age view: digits break runs, so "a 9 y o" keeps its "9" instead of becoming "a9yo".
    letter_run: re.Pattern[str]
    digit_prefix: re.Pattern[str]


_NARROW = _Passes(
    token_with_special=re.compile(r"(?<![^ ])[^ ]*?(?:[@$!|*]|[0-9][a-z]|[a-z][0-9])[^ ]*+"),
    char_run=re.compile(r"(?<![^ ])[^ ](?: [^ ])+(?![^ ])"),
    letter_run=re.compile(r"(?<![^ ])[a-z@$](?: [a-z@$])+(?![^ ])"),
    digit_prefix=re.compile(r"(?<![^ ])([0-9]++)(?=[a-z])"),
)
# Spaces may be doubled here (a token canonicalised away), and each run member is checked to be one
# character where it is read, so a failed run costs no backtracking.
_WIDE = _Passes(
    token_with_special=re.compile(r"(?<![^ \t])[^ \t]*?(?:[@$!|*]|[0-9][a-z]|[a-z][0-9])[^ \t]*+"),
    char_run=re.compile(r"(?<![^ \t])[^ \t](?= )(?: ++[^ \t](?![^ \t]))++"),
    letter_run=re.compile(r"(?<![^ \t])[a-z@$](?= )(?: ++[a-z@$](?![^ \t]))++"),
    digit_prefix=re.compile(r"(?<![^ \t])([0-9]++)(?=[a-z])"),
)
_LONE_SYMBOL = re.compile(r"(?<![^ ])[@$](?![^ ])")
_REPEAT_3 = re.compile(r"([a-z])\1\1+")
_REPEAT_2 = re.compile(r"([a-z])\1+")

_SCRIPT_GAP = re.compile(f"[ {_SEPARATOR}]+")
_SCRIPT_REPEAT_3 = re.compile(r"([^ 0-9])\1\1+")


def _latin_tail(folded: str) -> str:
    """Folded letters to tokens of ``[a-z0-9@$!|*]``, with "\\t" for wide gaps."""
    if "." in folded or "-" in folded or "_" in folded:
        folded = _PUNCT_RUN.sub(lambda m: m.group().replace(m.group(1), ""), folded)
    # Most prompts have no wide gap; this search is a quarter of the cost of the split.
    if _MAYBE_WIDE.search(folded):
        parts = _WIDE_GAP.split(folded)
        if len(parts) > 1:
            return "\t".join(_NON_TOKEN.sub(" ", part).strip() for part in parts).strip()
    return _NON_TOKEN.sub(" ", folded).strip()


def _gap(match: re.Match[str]) -> str:
    return "\t" if match.group().count(" ") >= 2 else " "


def _join_script_run(match: re.Match[str]) -> str:
    parts = match.group().split()
    return match.group() if all(part.isdigit() for part in parts) else "".join(parts)


def _script_view(nfkc: str, *, join: bool = True) -> str:
    """Words of any non-Latin script, folded, spaced-out letters joined, repeats cut to two.

    Terms skip the joining (``join=False``): "옷 벗" must keep its space, which a dense-script pattern
    makes optional, so it matches both "옷 벗고" and "옷벗고".
    """
    text = _SCRIPT_GAP.sub(_gap, nfkc.translate(_SCRIPT_TABLE)).strip()
    text = _join_runs(text, _join_script_run) if join else " ".join(text.split())
    return _SCRIPT_REPEAT_3.sub(r"\1\1", text)


class FoldedText:
    """The folds of one text: Latin folds (one, or two for Cyrillic), the script view if needed, and for
    non-ASCII text ``raw``, the NFKC-casefolded text with its accents (see ``shared.policy.match``)."""

    __slots__ = ("latin", "raw", "script")

    def __init__(self, latin: tuple[str, ...], script: str | None, raw: str | None) -> None:
        self.latin = latin
        self.script = script
        self.raw = raw


def fold_text(text: str) -> FoldedText:
    """Fold ``text`` for matching: NFKC (fullwidth and mathematical letters become ASCII), casefold (case,
    "ß"), then NFKD so accents can be dropped as marks ("nüde" -> "nude")."""
    if text.isascii():
        return FoldedText((_latin_tail(text.lower()),), None, None)
    nfkc = unicodedata.normalize("NFKC", text).casefold()
    decomposed = unicodedata.normalize("NFKD", nfkc)
    latin = [_latin_tail(decomposed.translate(_LATIN_TABLE))]
    if _CYRILLIC.search(decomposed):
        joined = _CYRILLIC_RUN.sub(lambda m: m.group().replace(m.group(1), ""), decomposed)
        mixed = _CYRILLIC_WORD.sub(lambda m: m.group().translate(_LATIN_IN_CYRILLIC), joined)
        latin.append(_latin_tail(mixed.translate(_TRANSLIT_TABLE)))
    script = _script_view(nfkc) if _OTHER_SCRIPT.search(nfkc) else None
    return FoldedText(tuple(dict.fromkeys(latin)), script, nfkc)


def _join_runs(text: str, join: Callable[[re.Match[str]], str], *, letters_only: bool = False) -> str:
    """Join runs of one-character tokens; a wide gap ("\\t") ends a run.

    A second pass on the single-spaced result joins what a wide gap kept apart only when nothing longer
    stood between ("a", wide gap, "b"), which keeps ``normalize`` idempotent: its output never holds a
    run of one-letter words.
    """
    if "\t" in text:
        text = (_WIDE.letter_run if letters_only else _WIDE.char_run).sub(join, text)
    text = " ".join(text.split())
    text = (_NARROW.letter_run if letters_only else _NARROW.char_run).sub(join, text)
    # A run of lone "@" and "$" joins to nothing, leaving a stray space.
    return " ".join(text.split()) if "  " in text or text[:1] == " " or text[-1:] == " " else text


def canonical_tokens(folded: str, *, keep_stars: bool, split_ages: bool, one_as_l: bool = False) -> str:
    """Turn folded text into canonical tokens: leetspeak undone, spaced-out letters joined, repeats cut.

    Every step only ever shortens or merges tokens in a way the next pass reproduces exactly, which is
    what makes ``normalize`` idempotent: the output alphabet is ``[a-z0-9 ]`` (plus ``*`` when
    ``keep_stars``), leet digits only remain in digit-only tokens, and no run of two or more
    single-character tokens containing a letter survives.
    """
    leet = _LEET_KEEP_STAR if keep_stars else _LEET_ONE_AS_L if one_as_l else _LEET
    passes = _WIDE if "\t" in folded else _NARROW
    if split_ages:
        # "15yo" -> "15 yo": without this the digits would be read as leetspeak ("isyo").
        folded = passes.digit_prefix.sub(r"\1 ", folded)

    def canon(match: re.Match[str]) -> str:
        token = match.group().strip("!|*")
        if _HAS_LETTER.search(token):
            return token.translate(leet)
        if token in ("@", "$"):
            # Could be a letter in a spaced-out word ("r @ p e"); decided when joining runs.
            return token
        return _NON_DIGIT.sub("", token)

    def join_run(match: re.Match[str]) -> str:
        parts = match.group().split()
        if any(part.isalpha() for part in parts):
            return "".join(parts).translate(leet)
        return " ".join(part for part in parts if part not in ("@", "$"))

    text = _join_runs(passes.token_with_special.sub(canon, folded), join_run, letters_only=split_ages)
    if "@" in text or "$" in text:
        text = " ".join(_LONE_SYMBOL.sub("", text).split())
    # Collapse to two, not one: "teeeen" must stay "teen" and "naked" must not lose a letter. The
    # single-letter form is a view of its own (shared.policy.match).
    return collapse_to_two(text)


def normalize(text: str) -> str:
    """Return the canonical matching form of ``text``: lowercase ASCII words separated by single spaces.

    Applies NFKC, casefolding, removal of zero-width/format characters, folding of Cyrillic/Greek
    look-alikes, leetspeak inside words ("n@k3d" -> "naked", while "18" stays "18"), joining of
    spaced-out letters ("s e x", "r.a.p.e"; a gap of two or more spaces separates words) and collapsing
    of letters repeated three or more times to two. Idempotent, so already-normalized text is safe.

    Digits glued to letters are read as leetspeak here ("15yo" -> "isyo"); age detection therefore uses a
    separate view that keeps such digits (see ``shared.policy.match``).
    """
    return canonical_tokens(fold_text(text).latin[0], keep_stars=False, split_ages=False)


@functools.cache
def term_form(term: str) -> tuple[str, str]:
    """Where a term from a term file is matched, and its normalised form there.

    Returns ``("dense", form)`` for Han/kana/Hangul terms (substring match in the script view),
    ``("script", form)`` for other non-Latin scripts (whole words in the script view) and
    ``("latin", form)`` otherwise; Cyrillic terms take their transliterated form.
    """
    folded = fold_text(term)
    if folded.script is not None:
        script = _script_view(unicodedata.normalize("NFKC", term).casefold(), join=False)
        return ("dense" if DENSE_CHARS.search(script) else "script"), script
    return "latin", canonical_tokens(folded.latin[-1], keep_stars=False, split_ages=False)


def collapse_to_two(text: str) -> str:
    return _REPEAT_3.sub(r"\1\1", text)


def collapse_to_one(text: str) -> str:
    return _REPEAT_2.sub(r"\1", text)
