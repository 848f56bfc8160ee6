"""Matching: term lists compiled once at import, searched over the normalised views of a text.

A text is judged on several views (``build_views``): for each Latin fold, the two-letter form, its
single-letter collapse ("nuude" -> "nude"), a form with censored words resolved when the text had ``*``
("r*pe" -> "rape") and one with "1" read as "l" when a word holds one ("lo1i"); the script view for
other scripts; the raw text for accented local words ("niña"); and, on demand, age views that keep
digits apart from letters ("15yo" -> "15 yo"). Benign phrases are masked in every Latin view and excuse
the script-view matches they contain.

A ``TermGroup`` holds the terms of some lists, split by where they match: whole Latin words (``\\b``
works, views are ``[a-z0-9 ~]``), whole words with the language's affixes in the script view (Arabic,
Devanagari), or substrings (Han, kana, Hangul, which put no spaces between words). Latin patterns are
prefix-factored tries behind a word-set gate, so most prompts never run a regex at all.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from shared.policy.lexicon import LANGUAGES, Language
from shared.policy.normalizer import (
    ONE_IN_WORD,
    canonical_tokens,
    collapse_to_one,
    collapse_to_two,
    fold_text,
    term_form,
)

__all__ = [
    "Gate",
    "TermGroup",
    "View",
    "Views",
    "build_views",
    "expand",
    "gate",
    "latin_pattern",
    "latin_terms",
    "term_group",
    "trie",
]

# Single-letter forms of terms that are everyday words ("ten" from "teen"), from every file.
_COLLAPSE_EXCEPTIONS = frozenset(
    term_form(word)[1] for lang in LANGUAGES for word in lang.terms("collapse_exceptions")
)


@dataclass(frozen=True, slots=True)
class View:
    """One normalised form of the text and the set of its words (for the gates)."""

    text: str
    tokens: frozenset[str]


def _view(text: str) -> View:
    return View(text, frozenset(text.split(" ")))


def expand(words: Iterable[str]) -> list[str]:
    """Add the single-letter form of each term so "nuude" (-> "nude") and "pusy" are also found."""
    out: set[str] = set()
    for word in words:
        out.add(word)
        single = collapse_to_one(word)
        # Very short collapsed forms ("x" from "xx") are ordinary letters, not obfuscations.
        if len(single) >= 3 and single not in _COLLAPSE_EXCEPTIONS:
            out.add(single)
    return sorted(out)


def trie(words: Iterable[str], *, optional_spaces: bool = False) -> str:
    """Prefix-factored alternation, so matching costs O(term length) per position, not O(terms).

    With ``optional_spaces`` a space inside a term may be absent from the text ("옷을 벗" matches "옷을벗").
    """
    root: dict[str, dict] = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def escape(ch: str) -> str:
        return " ?" if optional_spaces and ch == " " else re.escape(ch)

    def build(node: dict[str, dict]) -> str:
        branches = [escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        ends_here = "" in node
        if len(branches) == 1 and not ends_here:
            return branches[0]
        group = "(?:" + "|".join(branches) + ")"
        return group + "?" if ends_here else group

    return build(root)


def latin_pattern(words: Iterable[str]) -> str:
    """Any of ``words`` (normalised Latin terms) as whole words, single-letter forms included."""
    return r"\b" + trie(expand(words)) + r"\b"


@dataclass(frozen=True, slots=True)
class Gate:
    """The first and the last words of some terms: a text holding one of the terms holds one of each.

    Checking both is two set operations, and far more selective than either alone: "a" opens "à poil"
    and "palette" closes "nude palette", but few prompts hold a first and a last word of the same list.
    """

    first: frozenset[str]
    last: frozenset[str]

    def admits(self, tokens: frozenset[str]) -> bool:
        return not self.first.isdisjoint(tokens) and not self.last.isdisjoint(tokens)


def gate(words: Iterable[str]) -> Gate:
    terms = [term.split(" ") for term in expand(words)]
    return Gate(frozenset(t[0] for t in terms), frozenset(t[-1] for t in terms))


def latin_terms(groups: Iterable[str], languages: Iterable[Language] = LANGUAGES) -> list[str]:
    """The normalised Latin-script terms of ``groups`` (Cyrillic ones transliterated)."""
    out = []
    for lang in languages:
        for group in groups:
            for term in lang.terms(group):
                kind, form = term_form(term)
                if kind == "latin" and form:
                    out.append(form)
    return out


def _script_alternatives(groups: Iterable[str], languages: Iterable[Language]) -> list[str]:
    """Script-view patterns: whole words with the language's affixes, and dense-script substrings."""
    groups = tuple(groups)
    dense: set[str] = set()
    parts = []
    for lang in languages:
        words: set[str] = set()
        for group in groups:
            for term in lang.terms(group):
                kind, form = term_form(term)
                if kind == "dense":
                    dense.add(form)
                elif kind == "script":
                    words.add(form)
        if words:
            prefixes = [term_form(p)[1] for p in lang.terms("prefixes")]
            suffixes = [term_form(s)[1] for s in lang.terms("suffixes")]
            pre = f"(?:{trie(prefixes)})?" if prefixes else ""
            suf = f"(?:{trie(suffixes)})?" if suffixes else ""
            parts.append(rf"(?<![^ ]){pre}{trie(words)}{suf}(?![^ ])")
    if dense:
        parts.append(trie(dense, optional_spaces=True))
    return parts


class Views:
    """The normalised views one text is judged on (see the module docstring)."""

    __slots__ = ("_ages", "_benign_max_ends", "_benign_starts", "_folds", "_twos", "latin", "raw", "script")

    def __init__(
        self,
        latin: tuple[View, ...],
        folds: tuple[tuple[str, str], ...],
        script: str | None,
        raw: str | None,
    ) -> None:
        """``folds`` pairs each Latin fold with its masked two-letter view."""
        self.latin = latin
        self._folds = tuple(fold for fold, _ in folds)
        self._twos = tuple(two for _, two in folds)
        self.script = script
        self.raw = raw
        # Benign phrases in the script view: their starts (sorted, as found) and the running maximum of
        # their ends, so "is this match inside one" is a binary search, not a scan of every phrase.
        self._benign_starts: list[int] = []
        self._benign_max_ends: list[int] = []
        if script is not None and _BENIGN_SCRIPT is not None:
            end = -1
            for match in _BENIGN_SCRIPT.finditer(script):
                end = max(end, match.end(1))
                self._benign_starts.append(match.start(1))
                self._benign_max_ends.append(end)
        self._ages: tuple[str, ...] | None = None

    def ages(self) -> tuple[str, ...]:
        """Age views, built on demand (needed only after a sexual term): digits kept apart from letters
        ("15yo" -> "15 yo"), and each also with repeated letters cut to one ("thirteeen")."""
        if self._ages is None:
            views = [
                # Without a digit the age view is the word view already built.
                _mask(canonical_tokens(fold, keep_stars=False, split_ages=True)).text
                if _DIGIT.search(fold)
                else two
                for fold, two in zip(self._folds, self._twos, strict=True)
            ]
            self._ages = tuple(dict.fromkeys([*views, *(collapse_to_one(view) for view in views)]))
        return self._ages

    def script_hit(self, pattern: re.Pattern[str]) -> bool:
        """A match of ``pattern`` (a capturing lookahead) in the script view outside every benign phrase."""
        assert self.script is not None
        starts, max_ends = self._benign_starts, self._benign_max_ends
        for match in pattern.finditer(self.script):
            start, end = match.span(1)
            # Some benign phrase starting at or before this match reaches past its end: it contains it.
            index = bisect.bisect_right(starts, start) - 1
            if index < 0 or max_ends[index] < end:
                return True
        return False


@dataclass(frozen=True, slots=True)
class TermGroup:
    """The compiled terms of some lists; ``search`` says whether any of them is in a text's views.

    Every Latin match holds a first and a last word from ``gate``, so when a view's word set misses
    them the regex cannot match and is skipped: the common path for ordinary prompts.
    """

    latin: re.Pattern[str] | None
    gate: Gate
    script: re.Pattern[str] | None
    # Local terms as spelled with their accents ("niña"), which no other language's word shares.
    accented: re.Pattern[str] | None = None

    def search(self, views: Views) -> bool:
        if self.latin is not None:
            first, last, pattern = self.gate.first, self.gate.last, self.latin
            for view in views.latin:
                tokens = view.tokens
                if not first.isdisjoint(tokens) and not last.isdisjoint(tokens) and pattern.search(view.text):
                    return True
        if self.accented is not None and views.raw is not None and self.accented.search(views.raw):
            return True
        return self.script is not None and views.script is not None and views.script_hit(self.script)


def _accented(groups: Iterable[str], languages: Iterable[Language]) -> re.Pattern[str] | None:
    """Whole-word pattern for the terms of ``groups`` whose folding drops a letter's accent.

    A local term is local because its folded form is also another word ("nina" is a name); spelled with
    its accent ("niña") it is not, so it counts like any term. Matched on the NFKC-casefolded text.
    """
    words = []
    for lang in languages:
        for group in groups:
            for term in lang.terms(group):
                spelled = " ".join(unicodedata.normalize("NFKC", term).casefold().split())
                if term_form(term)[0] == "latin" and not spelled.isascii() and not _CYRILLIC.search(spelled):
                    words.append(spelled)
    return re.compile(rf"(?<!\w)(?:{trie(words)})(?!\w)") if words else None


def term_group(
    *groups: str, languages: Iterable[Language] = LANGUAGES, accented: Iterable[str] = ()
) -> TermGroup:
    """The terms of ``groups``; ``accented`` names local groups whose accented spellings count too."""
    languages = tuple(languages)
    words = latin_terms(groups, languages)
    script = _script_alternatives(groups, languages)
    return TermGroup(
        latin=re.compile(latin_pattern(words)) if words else None,
        gate=gate(words),
        script=re.compile("(?=(" + "|".join(script) + "))") if script else None,
        accented=_accented(accented, languages),
    )


_BENIGN = term_group("benign")
_BENIGN_SCRIPT = _BENIGN.script
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_DIGIT = re.compile("[0-9]")


def _mask(text: str) -> View:
    view = _view(text)
    if _BENIGN.latin is not None and _BENIGN.gate.admits(view.tokens):
        view = _view(_BENIGN.latin.sub("~", text))
    return view


# --------------------------------------------------------------------------------------------------
# Censored words ("r*pe", "f**k")
# --------------------------------------------------------------------------------------------------

# Lists whose words a starred token may stand for, in priority order (the first list that fits wins).
_STAR_GROUPS = (
    "sexual_violence", "bestiality", "minor_intrinsic", "minor", "minor_local", "sexual_act", "explicit",
    "sexualizing",
)  # fmt: skip


def _star_index() -> dict[tuple[int, str, str], tuple[str, ...]]:
    index: dict[tuple[int, str, str], list[str]] = {}
    for group in _STAR_GROUPS:
        for word in dict.fromkeys(latin_terms((group,))):
            if " " not in word and 3 <= len(word) <= 12:
                bucket = index.setdefault((len(word), word[0], word[-1]), [])
                if word not in bucket:
                    bucket.append(word)
    return {key: tuple(words) for key, words in index.items()}


_STAR_INDEX = _star_index()
# Anchored to a token start and possessive, so a long token without a star is read once, not once per
# position (a joined run of spaced letters can be 100 kB long).
_STARRED_TOKEN = re.compile(r"(?<![^ ])[^ *]*+\*[^ ]*+")


@functools.lru_cache(maxsize=4096)
def _resolve_star(token: str) -> str:
    """The listed word a censored token stands for, or the token without its stars.

    Only interior letters may be starred (so at least the first and last letter show): a lone "s**" does
    not stand for anything.
    """
    if token[0] != "*" and token[-1] != "*":
        for word in _STAR_INDEX.get((len(token), token[0], token[-1]), ()):
            if all(c == "*" or c == w for c, w in zip(token, word, strict=True)):
                return word
    return token.replace("*", "")


def build_views(text: str) -> Views:
    folded = fold_text(text)
    candidates: list[str] = []
    twos: list[str] = []
    for fold in folded.latin:
        resolved = None
        if "*" in fold:
            starred = canonical_tokens(fold, keep_stars=True, split_ages=False)
            resolved = _STARRED_TOKEN.sub(lambda m: _resolve_star(m.group()), starred)
            # Same result as normalize(text) (stars only ever sit between letters), one pass cheaper.
            two = collapse_to_two(starred.replace("*", ""))
        else:
            two = canonical_tokens(fold, keep_stars=False, split_ages=False)
        candidates += (two, collapse_to_one(two))
        twos.append(two)
        if resolved is not None:
            candidates.append(resolved)
        if ONE_IN_WORD.search(fold):
            candidates.append(canonical_tokens(fold, keep_stars=False, split_ages=False, one_as_l=True))
    masked = {text: _mask(text) for text in dict.fromkeys(candidates)}
    folds = tuple((fold, masked[two].text) for fold, two in zip(folded.latin, twos, strict=True))
    return Views(tuple(masked.values()), folds, folded.script, folded.raw)
