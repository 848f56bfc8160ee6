"""The policy evaluation set, judged by the word rules: a confusion table per role, then per language.

Run from the repository root: ``python -m bench.policy_eval`` (``--wrong`` lists every mismatch). A
measurement, not a test: it never fails; ``tests/unit/test_policy_eval.py`` asserts the goals on the same
cases (no hard-block case passes on any role, no neutral prompt altered, at least 95 % of suggestive and
explicit prompts covered on the moderated role and none of them blocked).

Each case is judged on both roles: ``moderated`` (shorts, scenes, /v1/imagegen: ``sanitize_general``) and
``1:1`` (private chat: ``evaluate_private_chat``). A decision counts as what it did to the prompt, not only
what it says: "neutral" with a changed prompt, or "covered" with anything but the prompt plus the coverage
suffix, is reported as "altered".
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared.policy import PolicyDecision, evaluate_private_chat, sanitize_general, with_coverage

EVAL_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "policy_eval.yaml"
LABELS = ("block", "explicit", "suggestive", "neutral")
DECISIONS = ("blocked", "covered", "neutral", "altered")
# Cases written after the rules, in phrasings no term file lists: they measure what the word rules miss
# (the guard model is the layer for those) and are kept out of the goals.
HELD_OUT = "heldout"
ROLES: dict[str, Callable[[str], PolicyDecision]] = {
    "moderated": sanitize_general,
    "1:1": evaluate_private_chat,
}
EXPECTED: dict[str, dict[str, str]] = {
    "moderated": {"block": "blocked", "explicit": "covered", "suggestive": "covered", "neutral": "neutral"},
    "1:1": {"block": "blocked", "explicit": "neutral", "suggestive": "neutral", "neutral": "neutral"},
}


@dataclass(frozen=True, slots=True)
class Case:
    lang: str
    kind: str
    label: str
    text: str

    @property
    def held_out(self) -> bool:
        return self.kind == HELD_OUT


@dataclass(frozen=True, slots=True)
class Verdict:
    case: Case
    role: str
    decided: str  # blocked, covered, neutral, or altered (the prompt is not what the decision promises)
    coverage: str | None

    @property
    def expected(self) -> str:
        return EXPECTED[self.role][self.case.label]

    @property
    def right(self) -> bool:
        return self.decided == self.expected


def load_cases(path: Path = EVAL_SET) -> list[Case]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]
    cases = [Case(str(c["lang"]), str(c["kind"]), str(c["label"]), str(c["text"])) for c in raw]
    bad = [c for c in cases if c.label not in LABELS]
    if bad:
        raise ValueError(f"unknown labels: {bad}")
    return cases


def decided(decision: PolicyDecision, text: str) -> str:
    original = text.strip()
    if decision.moderation == "blocked":
        return "blocked" if decision.prompt == "" else "altered"
    if decision.moderation == "covered":
        return "covered" if decision.prompt == with_coverage(original) else "altered"
    return "neutral" if decision.prompt == original else "altered"


def judge(case: Case, role: str) -> Verdict:
    decision = ROLES[role](case.text)
    return Verdict(case, role, decided(decision, case.text), decision.coverage)


def judge_all(cases: Iterable[Case]) -> list[Verdict]:
    return [judge(case, role) for case in cases for role in ROLES]


def confusion(verdicts: list[Verdict], role: str) -> list[str]:
    """Rows: the label (and the decision it expects on ``role``); columns: the decision taken."""
    mine = [v for v in verdicts if v.role == role]
    counts = Counter((v.case.label, v.decided) for v in mine)
    lines = [f"{role + ': expected':<26}" + "".join(f"{d:>9}" for d in DECISIONS) + f"{'right':>11}"]
    for label in LABELS:
        row = [v for v in mine if v.case.label == label]
        if not row:
            continue
        right = sum(v.right for v in row)
        name = f"{label} -> {EXPECTED[role][label]}"
        cells = "".join(f"{counts[label, d]:>9}" for d in DECISIONS)
        lines.append(f"{name:<26}{cells}{f'{right}/{len(row)}':>11}")
    right = sum(v.right for v in mine)
    lines.append(f"{'total':<26}{'':>36}{f'{right}/{len(mine)}':>11}")
    return lines


def coverage_reasons(verdicts: list[Verdict]) -> list[str]:
    """Moderated role, covered cases: the reason given (suggestive / explicit) against the label."""
    covered = [v for v in verdicts if v.role == "moderated" and v.decided == "covered"]
    counts = Counter((v.case.label, v.coverage) for v in covered)
    lines = [f"{'covered: label / reason':<26}{'suggestive':>11}{'explicit':>9}"]
    for label in ("suggestive", "explicit"):
        lines.append(f"{label:<26}{counts[label, 'suggestive']:>11}{counts[label, 'explicit']:>9}")
    return lines


def by_group(verdicts: list[Verdict], key: str) -> list[str]:
    """Per language or kind: cases, and the wrong decisions on each role."""
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        groups[getattr(verdict.case, key)].append(verdict)
    lines = [f"{key:<14}{'cases':>6}" + "".join(f"{role + ' wrong':>16}" for role in ROLES)]
    for name, group in groups.items():
        cases = len(group) // len(ROLES)
        wrong = "".join(f"{sum(not v.right for v in group if v.role == role):>16}" for role in ROLES)
        lines.append(f"{name:<14}{cases:>6}{wrong}")
    return lines


def time_per_prompt_us(cases: list[Case], repeats: int = 5) -> float:
    """Median over repeats of the mean time of one check (both entry points cost the same)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for case in cases:
            sanitize_general(case.text)
        samples.append((time.perf_counter() - start) / len(cases) * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wrong", action="store_true", help="list every case judged wrong")
    args = parser.parse_args(argv)
    cases = load_cases()
    goal = [case for case in cases if not case.held_out]
    held_out = [case for case in cases if case.held_out]
    verdicts = judge_all(goal)
    labels = Counter(case.label for case in goal)
    print(f"{EVAL_SET.name}: {len(goal)} cases ({', '.join(f'{n} {label}' for label, n in labels.items())})")
    print("rows: the case's label -> the decision expected on the role; columns: the decision taken\n")
    for role in ROLES:
        print("\n".join(confusion(verdicts, role)), end="\n\n")
    print("\n".join(coverage_reasons(verdicts)), end="\n\n")
    print("\n".join(by_group(verdicts, "lang")), end="\n\n")
    print("\n".join(by_group(verdicts, "kind")), end="\n\n")
    if held_out:
        print(f"held out ({len(held_out)} phrasings no term file lists; not in the goals):")
        print("\n".join(confusion(judge_all(held_out), "moderated")), end="\n\n")
    print(f"time per prompt: {time_per_prompt_us(goal):.1f} us (mean over the set, median of 5 runs)")
    if args.wrong:
        print("\nwrong:")
        for verdict in judge_all(cases):
            if not verdict.right:
                case = verdict.case
                print(
                    f"  [{verdict.role} {case.lang}/{case.kind}] {case.label}: expected {verdict.expected},"
                    f" got {verdict.decided}: {case.text!r}"
                )


if __name__ == "__main__":
    main()
