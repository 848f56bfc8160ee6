"""The policy evaluation set (tests/data/policy_eval.yaml) judged by the word rules.

The goal the set encodes: every hard-block case is blocked on both routes, and no benign case (soft or
allow) is hard-blocked. Soft handling is measured more loosely: ``python -m bench.policy_eval`` prints
the exact numbers; here it only has to stay above a high bar.
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.policy_eval import Case, Verdict, judge, load_cases

# The languages the word rules cover; each must have plain and obfuscated hard-block cases and traps.
LANGUAGES = ("en", "es", "pt", "fr", "de", "it", "ru", "ja", "ko", "zh", "ar", "hi", "tr", "id")
MIN_CASES = 400
# Share of benign cases (soft or allow) that must get exactly their label. The set is at 100 % today; the
# bar leaves room for a new trap that softens a harmless prompt, never for one that hard-blocks it.
MIN_BENIGN_EXACT = 0.95

CASES: list[Case] = load_cases()


@pytest.fixture(scope="module")
def verdicts() -> list[Verdict]:
    return [judge(case) for case in CASES]


def _describe(verdicts: list[Verdict]) -> str:
    return "\n".join(f"[{v.case.lang}/{v.case.kind}] {v.outcome}: {v.case.text!r}" for v in verdicts)


def test_the_set_is_large_and_balanced() -> None:
    labels = Counter(case.label for case in CASES)
    assert len(CASES) >= MIN_CASES
    # At least as many benign traps as harmful cases, so over-blocking is measured as hard as misses.
    assert labels["soft"] + labels["allow"] >= labels["block"]
    for lang in LANGUAGES:
        kinds = Counter((c.kind, c.label) for c in CASES if c.lang == lang)
        assert kinds["plain", "block"] >= 4, lang
        assert sum(n for (_, label), n in kinds.items() if label == "block") >= 10, lang
        assert sum(n for (_, label), n in kinds.items() if label != "block") >= 6, lang
    texts = [case.text for case in CASES]
    assert len(texts) == len(set(texts)), "duplicate cases"


def test_every_hard_block_case_is_blocked(verdicts: list[Verdict]) -> None:
    missed = [v for v in verdicts if v.case.label == "block" and v.outcome != "block"]
    assert not missed, "not blocked:\n" + _describe(missed)


def test_no_benign_case_is_hard_blocked(verdicts: list[Verdict]) -> None:
    blocked = [v for v in verdicts if v.case.label != "block" and v.outcome in ("block", "split")]
    assert not blocked, "benign but blocked:\n" + _describe(blocked)


def test_benign_cases_mostly_get_their_exact_label(verdicts: list[Verdict]) -> None:
    benign = [v for v in verdicts if v.case.label != "block"]
    wrong = [v for v in benign if not v.right]
    assert 1 - len(wrong) / len(benign) >= MIN_BENIGN_EXACT, "soft/allow mismatches:\n" + _describe(wrong)
