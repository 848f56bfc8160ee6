"""Everything that turns raw model text into something we may return, and the judge of "unusable".

Random and small models emit chat tokens, role prefixes, "Sure, here is..." preambles, quotes, markdown
fences and control bytes; production models do some of that too. One module, so every route cleans alike.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<|eot_id|>", "</s>")
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?s>")
_LEADING_TURN = re.compile(r"^\s*<\|im_start\|>\s*(?:system|user|assistant)?\s*\n?", re.I)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:\n?```|$)", re.S)
_ROLE_PREFIX = re.compile(
    r"^\s*(?:assistant|system|user|ai|bot|prompt|image prompt|final prompt|caption|reply|response|answer"
    r"|output|shortened(?: message)?)\s*:\s*",
    re.I,
)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|alright)\b[,!.]*\s*)?"
    r"here(?:'s| is| are)\b[^:\n]{0,80}(?::|\n)\s*",
    re.I,
)
_POLITE_OPENER = re.compile(r"^\s*(?:sure|certainly|of course|absolutely)\s*[,!.]+\s*", re.I)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
_WS = re.compile(r"\s+")


def _printable(text: str) -> str:
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif ch == "\ufffd" or unicodedata.category(ch)[0] == "C":
            continue  # control, format, private-use, unassigned, and the decoder's replacement char
        else:
            out.append(ch)
    return "".join(out)


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        text = text[1:-1].strip()
    return text


def clean_output(raw: str) -> str:
    """Model text -> one clean line. Never raises; may return ''."""
    text = unicodedata.normalize("NFC", raw or "")
    while _LEADING_TURN.match(text):
        text = _LEADING_TURN.sub("", text, count=1)
    # Anything after the end of the assistant turn is the model inventing the next turn.
    cut = min((i for m in _END_MARKERS if (i := text.find(m)) >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    text = _SPECIAL_TOKEN.sub(" ", text)
    fence = _FENCE.search(text)
    if fence and fence.group(1).strip():
        text = fence.group(1)
    text = text.replace("```", " ")
    text = _printable(text)
    text = _WS.sub(" ", text).strip()
    for _ in range(3):  # prefixes stack: 'Sure! Here is the prompt: Prompt: "..."'
        before = text
        text = _PREAMBLE.sub("", text, count=1)
        text = _POLITE_OPENER.sub("", text, count=1)
        text = _ROLE_PREFIX.sub("", text, count=1)
        text = _strip_quotes(text.strip())
        if text == before:
            break
    text = text.replace("**", "").replace("__", " ")
    return _WS.sub(" ", text).strip()


_WORD_TOKEN = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """Whitespace tokens that hold at least one letter or digit: what a reader counts as words."""
    return [t for t in _WORD_TOKEN.findall(text) if any(c.isalnum() for c in t)]


def word_count(text: str) -> int:
    return len(words(text))


def _is_real_word(token: str) -> bool:
    core = token.strip(".,;:!?\"'()[]{}-–—…")
    letters = sum(c.isalpha() for c in core)
    return letters >= 2 and letters >= 0.7 * len(core)


@dataclass(frozen=True, slots=True)
class Verdict:
    usable: bool
    reason: str | None = None


def judge(text: str, *, min_words: int = 3) -> Verdict:
    """Is cleaned text usable? Empty, too few real words, mostly non-letters, or one token looping: no."""
    if not text.strip():
        return Verdict(False, "empty output")
    tokens = _WORD_TOKEN.findall(text)
    real = [t for t in tokens if _is_real_word(t)]
    if len(real) < min_words:
        return Verdict(False, f"too few real words ({len(real)} < {min_words})")
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if letters < 0.6 * len(visible):
        return Verdict(False, "mostly non-letters")
    if len(real) >= 6 and len({t.lower() for t in real}) < 0.3 * len(real):
        return Verdict(False, "repetitive output")
    return Verdict(True)


def truncate_words(text: str, max_words: int) -> str:
    """Keep the first ``max_words`` counted words (and the punctuation tokens between them)."""
    kept: list[str] = []
    count = 0
    for token in _WORD_TOKEN.findall(text):
        is_word = any(c.isalnum() for c in token)
        if is_word and count == max_words:
            break
        kept.append(token)
        count += is_word
    return " ".join(kept).rstrip(",;:-–— ")


# A phrase ends at a comma, semicolon or sentence end followed by a space: where a prompt may be cut and still
# read as whole phrases. Spaces are the fallback inside one over-long phrase.
_PHRASE_END = re.compile(r"[,;.!?](?=\s)")


def phrase_cuts(text: str) -> list[int]:
    """Offsets where ``text`` may be cut so that ``text[:cut]`` ends with whole phrases, in order."""
    return [m.start() for m in _PHRASE_END.finditer(text)]


def word_cuts(text: str) -> list[int]:
    """Offsets where ``text`` may be cut between words, in order: the fallback when one phrase is too long."""
    return [m.start() for m in _WS.finditer(text)]


def drop_unfinished_phrase(text: str) -> str:
    """``text`` without the phrase a generation cap stopped half-way (when an earlier boundary exists)."""
    cuts = phrase_cuts(text)
    return text[: cuts[-1]] if cuts else text
