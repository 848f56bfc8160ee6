"""Deterministic shortening of long chat messages, and the check that a model's shortening kept the intent."""

from __future__ import annotations

import re

from services.llm_service.cleaning import truncate_words, words

# Function words and chat filler: what can go first without changing what picture is asked for.
_STOPWORD_TEXT = """
    a an the and or but so of to in on at by for with from into onto over under about as than then that
    this these those there here it its it's is are was were be been being am do does did doing have has had
    having i i'm i'd i've me my mine myself you you're your yours we our us they them their he him his she her
    hers what which who whom whose when where why how all any both each few more most other some such no nor
    not only own same too very just can could would should will shall may might must also really maybe
    perhaps like well oh hey hi hello please thanks thank okay ok yeah yes um uh actually basically literally
    kind sort thing things something anything stuff know think want wanted wish love lol haha if because
    while again ever even still quite pretty much many lot lots get got make made let let's show picture
    photo image pic"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TRIM = ".,;:!?\"'()[]{}"
_NORM = re.compile(r"[^\w']+")


def content_words(text: str) -> list[str]:
    out = []
    for token in words(text):
        core = _NORM.sub("", token.strip(_TRIM).lower())
        if core and core not in STOPWORDS:
            out.append(core)
    return out


def keyword_shorten(message: str, max_words: int) -> str:
    """Drop filler words, keep order, cap at ``max_words``: intent usually lives in the content words."""
    kept = [t for t in words(message) if _NORM.sub("", t.strip(_TRIM).lower()) not in STOPWORDS]
    if not kept:
        return truncate_words(message, max_words)
    return truncate_words(" ".join(t.strip(_TRIM) or t for t in kept), max_words)


def keeps_intent(original: str, shortened: str, *, max_words: int) -> bool:
    """A model's shortening is accepted only when it is shorter and shares the message's content words.

    Without the overlap check a model that answers with fluent nonsense would silently change the request.
    """
    n = len(words(shortened))
    if n == 0 or n > max_words or n >= len(words(original)):
        return False
    source = set(content_words(original))
    mine = content_words(shortened)
    if not source or not mine:
        return False
    shared = sum(w in source for w in mine)
    return shared >= min(2, len(source)) and shared >= 0.5 * len(mine)
