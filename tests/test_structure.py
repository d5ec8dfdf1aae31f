"""The shape rules of ../shared/STYLE.md, checked on every top-level file.

Run: .venv/bin/python -m pytest tests/test_structure.py -q
or:  .venv/bin/python tests/test_structure.py [FILE ...]   (prints every violation)

Rules: a file <= 400 lines, up to 600 only when its docstring says why on a line starting
"Size:"; a function <= 50 lines, a `forward` <= 40 lines and <= 5 parameters besides self; a
class <= 150 lines. Layers: the code behind a `--option` is a driver named run_<name>.py; no
other file imports a driver; the instruction-tuning files (sft*.py, run_sft*.py) do not import
the seed-001 classifier app (classifier.py); lora.py imports no loader (weights, gguf_reader,
tokenizer). Every write goes through atomic.py.

Oracle: Python's own parser (ast). A function's length is end_lineno - lineno + 1 of its `def`
(docstring included, decorators not); every def counts, methods and nested functions too.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE, HARD_CAP = 400, 600
MAX_FUNCTION, MAX_FORWARD, MAX_FORWARD_PARAMETERS, MAX_CLASS = 50, 40, 5, 150
DRIVER_PREFIX = "run_"
LOADERS = {"weights", "gguf_reader", "tokenizer"}


def says_why(source):
    """True when the module docstring has a line starting 'Size:' (why the file is long)."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return any(line.strip().startswith("Size:") for line in doc.splitlines())


def forward_parameters(node):
    """Parameters of a forward besides self (ctx for autograd Functions): positional,
    keyword-only, *args and **kwargs each count."""
    args = node.args
    names = args.posonlyargs + args.args + args.kwonlyargs
    extra = [a for a in (args.vararg, args.kwarg) if a is not None]
    return len(names) - 1 + len(extra)


def violations(path):
    """Lines like 'llama.py:120 forward is 45 lines (max 40)' for one file."""
    source = Path(path).read_text(encoding="utf-8")
    name = Path(path).name
    found = []
    lines = source.count("\n") + (not source.endswith("\n"))
    if lines > HARD_CAP or lines > MAX_FILE and not says_why(source):
        found.append(f"{name}: {lines} lines (max {MAX_FILE}; up to {HARD_CAP} with a 'Size:' "
                     f"line in the docstring saying why)")
    for node in ast.walk(ast.parse(source)):
        length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef) and length > MAX_CLASS:
            found.append(f"{name}:{node.lineno} class {node.name} is {length} lines "
                         f"(max {MAX_CLASS})")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FORWARD if node.name == "forward" else MAX_FUNCTION
            if length > limit:
                found.append(f"{name}:{node.lineno} {node.name} is {length} lines (max {limit})")
            if node.name == "forward" and forward_parameters(node) > MAX_FORWARD_PARAMETERS:
                found.append(f"{name}:{node.lineno} forward takes {forward_parameters(node)} "
                             f"parameters (max {MAX_FORWARD_PARAMETERS})")
    return found


def top_level_files():
    return sorted(ROOT.glob("*.py"))


def imports(path):
    """Names of the top-level modules a file imports (import x, from x import y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_files_and_functions_fit_one_screen():
    found = [v for path in top_level_files() for v in violations(path)]
    assert not found, "\n".join(found)


def test_every_option_runs_from_a_driver_named_run_star():
    sys.path.insert(0, str(ROOT))
    import run
    names = {module.__name__ for module in run.OPTIONS.values()}
    assert all(n.startswith(DRIVER_PREFIX) for n in names), sorted(names)


def test_lower_files_import_no_driver():
    """Drivers (run.py, run_*.py, sanity_check.py) may import anything; nothing else imports a
    driver, so the concept and plumbing files stand alone."""
    found = []
    for path in top_level_files():
        if path.stem == "run" or path.stem.startswith(DRIVER_PREFIX) or path.stem == "sanity_check":
            continue
        drivers = {m for m in imports(path) if m == "run" or m.startswith(DRIVER_PREFIX)}
        found += [f"{path.name} imports {m}" for m in sorted(drivers)]
    assert not found, "\n".join(found)


def test_layer_rules_of_the_peft_and_sft_files():
    found = []
    for path in top_level_files():
        used = imports(path)
        if path.stem.startswith(("sft", "run_sft")) and "classifier" in used:
            found.append(f"{path.name} imports classifier (use scoring.py)")
        if path.stem == "lora" and used & LOADERS:
            found.append(f"lora.py imports {sorted(used & LOADERS)} (a loader)")
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


def test_every_json_file_is_read_through_the_checked_reader():
    """json.loads / json.load only in file_checks.py (and safetensors_io.py, whose header parser
    needs a duplicate-key hook); everything else calls file_checks.read_json / json_value."""
    allowed = {"file_checks.py", "safetensors_io.py"}
    found = []
    for path in top_level_files():
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "json.loads(" in line or "json.load(" in line:
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


if __name__ == "__main__":
    paths = sys.argv[1:] or top_level_files()
    problems = [v for p in paths for v in violations(p)]
    print("\n".join(problems) or "no violations")
    sys.exit(1 if problems else 0)
