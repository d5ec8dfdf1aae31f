"""`--option eval` against lm-eval 0.4.13 on the same files, model and machine, in one run.

    .venv/bin/python benchmarks/bench_eval.py [--limit N] [--batch_size 16] [--threads T]
        [--json out.json] [FILE ...]      (default: ../shared/data/mc/*.jsonl, layouts told by their fields)

Per file, each side runs in a fresh Python process, timed whole (start, imports, model load,
scoring), one after the other:
  ours     run.py --option eval --data FILE --batch_size B [--limit N] --json ...
  lm-eval  lm_eval.simple_evaluate, hf backend, batch B, CPU, fp32: transformers dequantizes the
           default GGUF; lm-eval's own task YAML for the file's layout with dataset_path: json on
           the file (tests/lm_eval_oracle.py), offline, log_samples=True.
Both score the default SmolLM2-135M-Instruct GGUF (Q4_1, dequantized to fp32). Prints a markdown
table: task, n, choices, acc / acc_norm of each side, the questions where both pick the same
choice, the largest per-choice log-likelihood difference, seconds of each side and the speed-up;
the model and dtype above it; the seconds spent scoring alone (load excluded) below it. --json
writes the same as data.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import evaluation  # noqa: E402
import weights  # noqa: E402


def ours(path, limit, batch_size, folder, threads):
    out = folder / "ours.json"
    argv = [sys.executable, str(ROOT / "run.py"), "--option", "eval", "--data", str(path),
            "--batch_size", str(batch_size), "--json", str(out), "--out_dir", str(folder),
            "--threads", str(threads)]
    start = time.perf_counter()
    subprocess.run(argv + (["--limit", str(limit)] if limit else []), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (result,) = json.loads(out.read_text())["results"]
    return result, seconds


def lm_eval_worker(layout, path, limit, batch_size, out, threads):
    """In the child process: load lm-eval's HFLM, score the file, write Docs and the times."""
    start = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    import lm_eval_oracle
    model = lm_eval_oracle.load_model(batch_size=batch_size)
    loaded = time.perf_counter()
    docs = lm_eval_oracle.score(layout, path, batch_size=batch_size, limit=limit, model=model)
    Path(out).write_text(json.dumps({"docs": [d._asdict() for d in docs],
                                     "load_s": loaded - start,
                                     "score_s": time.perf_counter() - loaded}))


def theirs(layout, path, limit, batch_size, folder, threads):
    out = folder / "lm_eval.json"
    argv = [sys.executable, __file__, "--_worker", layout, str(path), str(out),
            "--batch_size", str(batch_size), "--threads", str(threads)] + (
                ["--limit", str(limit)] if limit else [])
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return json.loads(out.read_text()), seconds


def compare(path, limit, batch_size, threads):
    layout, questions = evaluation.read_questions(path, limit)
    with tempfile.TemporaryDirectory() as tmp:
        mine, mine_s = ours(path, limit, batch_size, Path(tmp), threads)
        other, other_s = theirs(layout, path, limit, batch_size, Path(tmp), threads)
    docs = other["docs"]
    assert len(docs) == len(mine["loglikelihoods"]) == len(questions), path
    diff = max(abs(a - b) for ll, d in zip(mine["loglikelihoods"], docs)
               for a, b in zip(ll, d["loglikelihoods"], strict=True))
    same = sum(p == evaluation.argmax(d["loglikelihoods"])
               for p, d in zip(mine["predictions"], docs))
    n = len(docs)
    return {"data": str(path), "task": Path(path).stem, "layout": layout, "n": n,
            "choices": sum(len(q.requests) for q in questions),
            "ours": {"acc": mine["acc"], "acc_norm": mine["acc_norm"], "s": mine_s,
                     "score_s": mine.get("seconds")},
            "lm_eval": {"acc": sum(d["acc"] for d in docs) / n,
                        "acc_norm": sum(d["acc_norm"] for d in docs) / n, "s": other_s,
                        "load_s": other["load_s"], "score_s": other["score_s"]},
            "same_predictions": same, "max_abs_ll_diff": diff}


def table(rows, model, batch_size, limit, threads):
    lines = [f"model: {model} (Q4_1 GGUF dequantized to float32), CPU, "
             f"{os.cpu_count()} cores, {threads} torch thread(s) per side, batch {batch_size}"
             + (f", first {limit} questions per file" if limit else ""), "",
             "| task | n | choices | ours acc / acc_norm | lm-eval acc / acc_norm "
             "| same prediction | max abs ll diff | ours s | lm-eval s | speed-up |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, t = r["ours"], r["lm_eval"]
        lines.append(f"| {r['task']} | {r['n']} | {r['choices']} | {o['acc']:.4f} / "
                     f"{o['acc_norm']:.4f} | {t['acc']:.4f} / {t['acc_norm']:.4f} | "
                     f"{r['same_predictions']}/{r['n']} | {r['max_abs_ll_diff']:.1e} | "
                     f"{o['s']:.1f} | {t['s']:.1f} | {t['s'] / o['s']:.2f}x |")
    o_s, t_s = sum(r["ours"]["s"] for r in rows), sum(r["lm_eval"]["s"] for r in rows)
    lines.append(f"| **all** | {sum(r['n'] for r in rows)} | {sum(r['choices'] for r in rows)} "
                 f"| | | {sum(r['same_predictions'] for r in rows)}/{sum(r['n'] for r in rows)} "
                 f"| {max(r['max_abs_ll_diff'] for r in rows):.1e} | {o_s:.1f} | {t_s:.1f} | "
                 f"{t_s / o_s:.2f}x |")
    o_score = sum(r["ours"]["score_s"] or 0 for r in rows)
    t_score = sum(r["lm_eval"]["score_s"] for r in rows)
    lines.append(f"\nSeconds are wall time of a fresh process per file and side (start, imports, "
                 f"model load, scoring). Scoring alone: ours {o_score:.1f} s, lm-eval "
                 f"{t_score:.1f} s ({t_score / max(o_score, 1e-9):.2f}x).")
    return "\n".join(lines)


def torch_threads():
    import torch
    return torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=sorted((ROOT.parent / "shared" / "data" / "mc")
                                                           .glob("*.jsonl")))
    parser.add_argument("--limit", type=int, default=None, help="first N questions per file")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--threads", type=int, default=torch_threads(),
                        help="torch threads of each side (default: torch's default here)")
    parser.add_argument("--_worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        return lm_eval_worker(*args._worker[:2], args.limit, args.batch_size, args._worker[2],
                              args.threads)
    if not args.files:
        parser.error("no files: give FILE ... (the default ../shared/data/mc/*.jsonl is absent)")
    rows = [compare(path, args.limit, args.batch_size, args.threads) for path in args.files]
    model = Path(weights.default_model_path()).name
    print(table(rows, model, args.batch_size, args.limit, args.threads))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "dtype": "float32",
                                               "batch_size": args.batch_size,
                                               "threads": args.threads,
                                               "limit": args.limit, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
