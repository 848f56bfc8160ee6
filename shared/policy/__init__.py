"""Content policy for prompts: hard blocks everywhere, coverage for suggestive and explicit prompts on
moderated routes, everything else unchanged.

One step per module, each importable on its own:

* ``lexicon``: reads the term files, one per language, in ``terms/`` (data only; see its README).
* ``normalize``: any Unicode text to the forms terms are matched on (case, accents, full-width forms,
  zero-width characters, look-alike and transliterated Cyrillic, leetspeak, spaced-out letters, script
  folds for Arabic, Devanagari, Han, kana).
* ``match``: term lists compiled into gated patterns, searched over a text's views; ages.
* ``rules``: which lists combine into which category.
* ``decide``: the entry points below.

Matching is on whole words for spaced scripts, so "grape", "therapist" or "Sussex" never trip "rape",
"rapist" or "sex", while "r.a.p.e", "n@ked" or Cyrillic look-alikes do; Han, kana and Hangul terms match as
substrings, with benign phrases that excuse what they contain. All regexes are compiled once at import and
are free of nested unbounded quantifiers, so judging a prompt is linear in its length.
"""

from __future__ import annotations

from shared.policy.decide import (
    CATEGORY_SUGGESTIVE,
    COVERAGE_PHRASE,
    COVERAGE_SUFFIX,
    HARD_BLOCK_CATEGORIES,
    INLINE_CHARS,
    SOFT_BLOCK_CATEGORIES,
    PolicyDecision,
    check_expanded_prompt,
    decide_off_loop,
    evaluate_private_chat,
    mentions_minor,
    sanitize_general,
    with_coverage,
)
from shared.policy.normalizer import normalize

__all__ = [
    "CATEGORY_SUGGESTIVE",
    "COVERAGE_PHRASE",
    "COVERAGE_SUFFIX",
    "HARD_BLOCK_CATEGORIES",
    "INLINE_CHARS",
    "SOFT_BLOCK_CATEGORIES",
    "PolicyDecision",
    "check_expanded_prompt",
    "decide_off_loop",
    "evaluate_private_chat",
    "mentions_minor",
    "normalize",
    "sanitize_general",
    "with_coverage",
]
