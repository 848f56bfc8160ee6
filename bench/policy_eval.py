"""The policy evaluation set, judged by the word rules: per language and kind, blocked / allowed / wrong.

Run from the repository root: ``python -m bench.policy_eval`` (``--wrong`` lists every mismatch). A
measurement, not a test: it never fails; ``tests/unit/test_policy_eval.py`` asserts the goal on the same
cases (every block case blocked, no soft or allow case hard-blocked).

Each case is judged on both entry points: ``block`` means both refuse it, ``soft`` that private chat
passes it unchanged and the moderated check softens it, ``allow`` that both pass it unchanged.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared.policy import evaluate_private_chat, sanitize_general

EVAL_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "policy_eval.yaml"
LABELS = ("block", "soft", "allow")


@dataclass(frozen=True, slots=True)
class Case:
    lang: str
    kind: str
    label: str
    text: str


@dataclass(frozen=True, slots=True)
class Verdict:
    case: Case
    outcome: str  # block, soft, allow, or "split" when the two entry points disagree on a hard block

    @property
    def right(self) -> bool:
        return self.outcome == self.case.label


def load_cases(path: Path = EVAL_SET) -> list[Case]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]
    cases = [Case(str(c["lang"]), str(c["kind"]), str(c["label"]), str(c["text"])) for c in raw]
    bad = [c for c in cases if c.label not in LABELS]
    if bad:
        raise ValueError(f"unknown labels: {bad}")
    return cases


def judge(case: Case) -> Verdict:
    private, general = evaluate_private_chat(case.text), sanitize_general(case.text)
    if private.blocked and general.blocked:
        outcome = "block"
    elif private.blocked or general.blocked:
        outcome = "split"
    elif general.soft_blocked and private.prompt == case.text.strip():
        outcome = "soft"
    elif not general.soft_blocked and private.prompt == general.prompt == case.text.strip():
        outcome = "allow"
    else:
        outcome = "split"
    return Verdict(case, outcome)


def _row(name: str, verdicts: list[Verdict]) -> str:
    block = [v for v in verdicts if v.case.label == "block"]
    benign = [v for v in verdicts if v.case.label != "block"]
    soft = [v for v in verdicts if v.case.label == "soft"]
    allow = [v for v in verdicts if v.case.label == "allow"]
    blocked = sum(v.outcome == "block" for v in block)
    benign_blocked = sum(v.outcome in ("block", "split") for v in benign)
    soft_right = sum(v.outcome == "soft" for v in soft)
    allow_right = sum(v.outcome == "allow" for v in allow)
    wrong = sum(not v.right for v in verdicts)
    return (
        f"{name:<14}{len(verdicts):>6}{f'{blocked}/{len(block)}':>12}{benign_blocked:>10}"
        f"{f'{soft_right}/{len(soft)}':>10}{f'{allow_right}/{len(allow)}':>10}{wrong:>7}"
    )


def table(title: str, groups: dict[str, list[Verdict]]) -> list[str]:
    header = (
        f"{title:<14}{'cases':>6}{'blocked':>12}{'benign!':>10}{'soft ok':>10}{'allow ok':>10}{'wrong':>7}"
    )
    return [header, *(_row(name, verdicts) for name, verdicts in groups.items())]


def grouped(verdicts: Iterable[Verdict], key: str) -> dict[str, list[Verdict]]:
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        groups[getattr(verdict.case, key)].append(verdict)
    return dict(groups)


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
    verdicts = [judge(case) for case in cases]
    print(
        f"{EVAL_SET.name}: {len(cases)} cases; blocked = block cases refused on both routes, benign! = soft"
    )
    print("or allow cases hard-blocked, soft ok / allow ok = benign cases given their exact label\n")
    for line in table("language", grouped(verdicts, "lang")):
        print(line)
    print()
    for line in table("kind", grouped(verdicts, "kind")):
        print(line)
    print()
    for line in table("all", {"all": verdicts})[1:]:
        print(line)
    print(f"\ntime per prompt: {time_per_prompt_us(cases):.1f} us (mean over the set, median of 5 runs)")
    if args.wrong:
        print("\nwrong:")
        for verdict in verdicts:
            if not verdict.right:
                case = verdict.case
                print(
                    f"  [{case.lang}/{case.kind}] expected {case.label}, got {verdict.outcome}: {case.text!r}"
                )


if __name__ == "__main__":
    main()
