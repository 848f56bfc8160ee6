"""The documents people run commands from stay true to the code."""

from __future__ import annotations

from pathlib import Path

from scripts.settings_doc import main as settings_doc_main

ROOT = Path(__file__).resolve().parents[2]


def test_deployment_settings_table_is_current() -> None:
    assert settings_doc_main(["--check", str(ROOT / "DEPLOYMENT.md")]) == 0


def test_readme_opens_with_the_two_commands() -> None:
    first_block = (ROOT / "README.md").read_text().split("```")[1]
    assert "bash scripts/run_local.sh --demo" in first_block
    assert "bash scripts/test.sh" in first_block
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    for script in ("scripts/run_local.sh", "scripts/test.sh"):
        assert (ROOT / script).exists()
