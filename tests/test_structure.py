"""The shape rules of DEVELOPERS' guide, checked on every top-level file.

Run: .venv/bin/python -m pytest tests/test_structure.py -q
or:  .venv/bin/python tests/test_structure.py [FILE ...]   (prints every violation)

Oracle: Python's own parser (ast). A function's length is end_lineno - lineno + 1 of its `def`
(docstring included, decorators not); every def counts, methods and nested functions too.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE, MAX_FUNCTION, MAX_FORWARD = 600, 60, 40


def violations(path):
    """Lines like 'llama.py:120 forward is 45 lines (max 40)' for one file."""
    source = Path(path).read_text(encoding="utf-8")
    name = Path(path).name
    found = []
    lines = source.count("\n") + (not source.endswith("\n"))
    if lines > MAX_FILE:
        found.append(f"{name}: {lines} lines (max {MAX_FILE})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            limit = MAX_FORWARD if node.name == "forward" else MAX_FUNCTION
            if length > limit:
                found.append(f"{name}:{node.lineno} {node.name} is {length} lines (max {limit})")
    return found


def top_level_files():
    return sorted(ROOT.glob("*.py"))


def test_files_and_functions_fit_one_screen():
    found = [v for path in top_level_files() for v in violations(path)]
    assert not found, "\n".join(found)


def test_no_file_writes_outside_atomic():
    """Every writer goes through atomic.py: no os.replace, savefig to a path, or write_text."""
    banned = ("os.replace(", ".write_text(", ".write_bytes(", "open(tmp")
    found = []
    for path in top_level_files():
        if path.name == "atomic.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(b in line for b in banned):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


if __name__ == "__main__":
    paths = sys.argv[1:] or top_level_files()
    problems = [v for p in paths for v in violations(p)]
    print("\n".join(problems) or "no violations")
    sys.exit(1 if problems else 0)
