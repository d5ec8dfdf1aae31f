"""`--option eval` against lm-eval 0.4.13 on the same files, model and machine, in one run.

    .venv/bin/python benchmarks/bench_eval.py [--limit N] [--batch_size 16] [--json out.json]
        [FILE ...]      (default: ../shared/data/mc/*.jsonl, layouts told by their fields)

Both sides score the default SmolLM2-135M-Instruct GGUF in fp32 on the CPU: ours through
`run.py --option eval` (a subprocess, timed whole: load + scoring), lm-eval through its hf backend
(transformers dequantizes the GGUF; lm-eval's own task YAMLs on the local files, see
tests/lm_eval_oracle.py; timed whole, in this process). Prints a markdown table (task, n, acc /
acc_norm of each side, the largest per-choice log-likelihood difference, seconds, the ratio).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import evaluation  # noqa: E402
import lm_eval_oracle  # noqa: E402
import weights  # noqa: E402


def ours(files, limit, batch_size, out):
    argv = [sys.executable, str(ROOT / "run.py"), "--option", "eval", "--data", *map(str, files),
            "--batch_size", str(batch_size), "--json", str(out), "--out_dir", str(out.parent)]
    start = time.perf_counter()
    subprocess.run(argv + (["--limit", str(limit)] if limit else []), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["results"], time.perf_counter() - start


def theirs(files, limit, batch_size, folder):
    tasks = {}
    for path in files:
        layout, _ = evaluation.read_questions(path, 1)
        tasks[Path(path).stem] = (lm_eval_oracle.YAMLS[layout], path)
    start = time.perf_counter()
    docs = lm_eval_oracle.run(tasks, folder, weights.default_model_path(), batch_size, limit)
    return docs, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=sorted((ROOT.parent / "shared" / "data" / "mc")
                                                           .glob("*.jsonl")))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mine, mine_s = ours(args.files, args.limit, args.batch_size, Path(tmp) / "ours.json")
        other, other_s = theirs(args.files, args.limit, args.batch_size, Path(tmp))
    rows = ["| task | n | ours acc / acc_norm | lm-eval acc / acc_norm | max abs ll diff |",
            "|---|---|---|---|---|"]
    for r in mine:
        docs = other[Path(r["data"]).stem]
        diff = max(abs(a - b) for ll, d in zip(r["loglikelihoods"], docs) for a, b in zip(ll, d[0]))
        acc = sum(d[1] for d in docs) / len(docs)
        acc_norm = sum(d[2] for d in docs) / len(docs)
        rows.append(f"| {Path(r['data']).stem} | {r['n']} | {r['acc']:.4f} / {r['acc_norm']:.4f}"
                    f" | {acc:.4f} / {acc_norm:.4f} | {diff:.1e} |")
    choices = sum(len(ll) for r in mine for ll in r["loglikelihoods"])
    rows.append(f"\n{choices} choices. Wall time, load included: ours {mine_s:.0f} s, lm-eval "
                f"{other_s:.0f} s: ours is {other_s / mine_s:.2f}x faster.")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"ours_s": mine_s, "lm_eval_s": other_s,
                                               "table": rows}, indent=2))


if __name__ == "__main__":
    main()
