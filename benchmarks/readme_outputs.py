"""Regenerate every example output in README.md by running its command.

A README example is a fenced block right after a marker line:

    <!-- run: NAME -->
    ```
    $ COMMAND
    ...what COMMAND printed (stdout; add 2>&1 to the command to show stderr)...
    ```

This script runs each COMMAND with bash in the repository root and writes its output under the
`$` line, so the README shows what the commands print today. Progress bars go to stderr and are
not shown. Usage (from the repository root):

    .venv/bin/python benchmarks/readme_outputs.py              every block (about 20 minutes here)
    .venv/bin/python benchmarks/readme_outputs.py --only generate,chat
    .venv/bin/python benchmarks/readme_outputs.py --list

Tested in tests/test_readme.py (every marked block has a command; the parser round-trips).
"""
import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import atomic  # noqa: E402

MARKER = re.compile(r"^<!-- run: ([\w.-]+) -->\n```\n\$ (.*?)\n(.*?)^```$", re.M | re.S)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def blocks(text):
    """[(name, command, output, match)] of every marked block, in README order."""
    return [(m.group(1), m.group(2), m.group(3), m) for m in MARKER.finditer(text)]


def run_command(command, timeout):
    """stdout of `bash -c command` in the repository root, trailing spaces trimmed."""
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin",
                                                "HOME": str(Path.home())})
    lines = [ANSI.sub("", line).rstrip() for line in done.stdout.splitlines()]
    return "\n".join(lines).strip("\n") + "\n", done.returncode


def replace_outputs(text, names, timeout):
    """The README with the selected blocks' outputs regenerated (later blocks first, so the
    offsets of earlier matches stay valid)."""
    for name, command, _, match in reversed(blocks(text)):
        if names and name not in names:
            continue
        start = time.perf_counter()
        output, code = run_command(command, timeout)
        print(f"{name}: exit {code}, {time.perf_counter() - start:.0f} s, "
              f"{output.count(chr(10))} lines", flush=True)
        body = f"<!-- run: {name} -->\n```\n$ {command}\n{output}```"
        text = text[:match.start()] + body + text[match.end():]
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="the file to update")
    parser.add_argument("--only", default="", help="comma-separated block names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the block names and commands")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    args = parser.parse_args()
    text = Path(args.readme).read_text(encoding="utf-8")
    if args.list:
        for name, command, _, _ in blocks(text):
            print(f"{name}: {command}")
        return
    names = {n for n in args.only.split(",") if n}
    unknown = names - {b[0] for b in blocks(text)}
    if unknown:
        parser.error(f"--only {sorted(unknown)}: no such block in {args.readme}; see --list")
    atomic.write_text_atomic(args.readme, replace_outputs(text, names, args.timeout))


if __name__ == "__main__":
    main()
