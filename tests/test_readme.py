"""Tests for README.md and benchmarks/readme_outputs.py: the two command lines, and that every
example block names the command its output came from.

Run: .venv/bin/python -m pytest tests/test_readme.py -q

Oracles: the README text itself and .ci/run (which must run the README's test line word for word);
a README written here with known blocks (the regeneration parser).
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme_outputs  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    lines = README.splitlines()
    assert lines[:4] == ["```bash", "bash setup.sh && .venv/bin/python run.py --option generate",
                         "bash setup.sh --dev && .venv/bin/python -m pytest -q", "```"]
    assert lines[2] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_marked_block_has_a_command_and_every_option_is_documented():
    blocks = readme_outputs.blocks(README)
    assert len(blocks) >= 8 and len({b[0] for b in blocks}) == len(blocks)
    for name, command, _, _ in blocks:
        assert command.startswith(".venv/bin/python "), name
    import run
    for option in run.OPTIONS:
        assert f"--option {option}" in README, f"--option {option} is not in README.md"


def test_outputs_are_replaced_under_their_commands(tmp_path):
    text = "intro\n<!-- run: a -->\n```\n$ echo one; echo two\nold\n```\nmiddle\n" \
           "<!-- run: b -->\n```\n$ printf 'x  \\n'\n```\nend\n"
    new = readme_outputs.replace_outputs(text, set(), timeout=30)
    assert new == ("intro\n<!-- run: a -->\n```\n$ echo one; echo two\none\ntwo\n```\nmiddle\n"
                   "<!-- run: b -->\n```\n$ printf 'x  \\n'\nx\n```\nend\n")
    assert readme_outputs.replace_outputs(text, {"b"}, timeout=30).count("old") == 1
