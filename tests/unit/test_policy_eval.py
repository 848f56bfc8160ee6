"""The policy evaluation set (tests/data/policy_eval.yaml) judged by the word rules, on both roles.

The goals of issue #23: no hard-block case passes on any role; no neutral prompt is altered (no clause, no
word lost) on any role; at least 95 % of suggestive and explicit prompts are covered on the moderated role
and none of them is blocked; 1:1 chat has no moderation beyond the hard block. ``python -m bench.policy_eval``
prints the confusion tables these numbers come from. Held-out cases (phrasings no term file lists) are
measured by the bench and kept out of the goals, except that none of them may be blocked.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.policy_eval import LABELS, Case, Verdict, judge_all, load_cases

# The languages the word rules cover; each must have plain and obfuscated hard-block cases and traps.
LANGUAGES = ("en", "es", "pt", "fr", "de", "it", "ru", "ja", "ko", "zh", "ar", "hi", "tr", "id")
MIN_CASES = 400
MIN_SUGGESTIVE = 40
MIN_SUGGESTIVE_LANGUAGES = 6
MIN_COVERED = 0.95

CASES: list[Case] = load_cases()
GOAL_CASES = [case for case in CASES if not case.held_out]


@pytest.fixture(scope="module")
def verdicts() -> list[Verdict]:
    return judge_all(GOAL_CASES)


def _describe(verdicts: list[Verdict]) -> str:
    return "\n".join(f"[{v.role} {v.case.lang}/{v.case.kind}] {v.decided}: {v.case.text!r}" for v in verdicts)


def test_the_set_is_large_and_balanced() -> None:
    labels = Counter(case.label for case in GOAL_CASES)
    assert set(labels) == set(LABELS)
    assert len(GOAL_CASES) >= MIN_CASES
    # At least as many benign cases as harmful ones, so over-blocking is measured as hard as misses.
    assert labels["explicit"] + labels["suggestive"] + labels["neutral"] >= labels["block"]
    suggestive_languages = {c.lang for c in GOAL_CASES if c.label == "suggestive"}
    assert labels["suggestive"] >= MIN_SUGGESTIVE
    assert len(suggestive_languages) >= MIN_SUGGESTIVE_LANGUAGES, suggestive_languages
    for lang in LANGUAGES:
        kinds = Counter((c.kind, c.label) for c in GOAL_CASES if c.lang == lang)
        assert kinds["plain", "block"] >= 4, lang
        assert sum(n for (_, label), n in kinds.items() if label == "block") >= 10, lang
        assert sum(n for (_, label), n in kinds.items() if label != "block") >= 6, lang
    texts = [case.text for case in CASES]
    assert len(texts) == len(set(texts)), "duplicate cases"


def test_no_hard_block_case_passes_on_any_role(verdicts: list[Verdict]) -> None:
    passed = [v for v in verdicts if v.case.label == "block" and v.decided != "blocked"]
    assert not passed, "not blocked:\n" + _describe(passed)


def test_no_neutral_prompt_is_altered_on_any_role(verdicts: list[Verdict]) -> None:
    altered = [v for v in verdicts if v.case.label == "neutral" and v.decided != "neutral"]
    assert not altered, "neutral but changed:\n" + _describe(altered)


def test_suggestive_and_explicit_are_covered_on_the_moderated_role(verdicts: list[Verdict]) -> None:
    adult = [v for v in verdicts if v.role == "moderated" and v.case.label in ("suggestive", "explicit")]
    blocked = [v for v in adult if v.decided == "blocked"]
    assert not blocked, "covered content refused:\n" + _describe(blocked)
    missed = [v for v in adult if v.decided != "covered"]
    assert 1 - len(missed) / len(adult) >= MIN_COVERED, "not covered:\n" + _describe(missed)


def test_one_to_one_has_no_moderation_beyond_the_hard_block(verdicts: list[Verdict]) -> None:
    # Suggestive and explicit adult prompts pass 1:1 exactly as written: no clause, never blocked.
    changed = [v for v in verdicts if v.role == "1:1" and v.case.label != "block" and v.decided != "neutral"]
    assert not changed, "moderated on 1:1:\n" + _describe(changed)


def test_no_held_out_case_is_blocked() -> None:
    # What the word rules miss passes (to the guard); it must never be hard-blocked instead.
    held_out = judge_all(case for case in CASES if case.held_out)
    assert held_out, "the held-out batch is gone"
    blocked = [v for v in held_out if v.decided in ("blocked", "altered")]
    assert not blocked, "held-out case refused or changed:\n" + _describe(blocked)
