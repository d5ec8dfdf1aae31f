"""Benchmark: seed 001's finetune / lora training step, packed (the default) vs padded, on the same
batches in one process (issue 20).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_classifier_packing.py --threads 1 \
        [--data ../shared/data/cfimdb --task cfimdb] [--batch_size 10] [--steps 6] \
        [--options finetune,lora] [--json out.json]

For each option: the model built as `run.py --option finetune | lora` builds it (seed 001's
defaults: LoRA r 4, alpha 1 on wq, wv; the prompt head, fused path), the training file encoded as
the run encodes it, and the first --steps batches of the run's seeded shuffle. Each batch is timed
padded, then packed (forward, loss, backward; no optimizer step, so the weights stay put and both
sides compute the same thing), the two alternating so that a noisy machine slows both alike, after one untimed warm-up batch
each way (first-call allocations);
the head dropout draws from the same seed on both sides, and the two losses must agree (1e-4).
Prints a markdown table: seconds per step each way, slots per real token padded and packed,
and the ratio padded / packed (> 1: packing is faster).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import atomic  # noqa: E402
import classifier  # noqa: E402
import data  # noqa: E402
import run  # noqa: E402
import run_classifier  # noqa: E402
import scoring  # noqa: E402


def run_args(option, args):
    """The parsed flags of `run.py --option OPTION` on this task (seed 001's defaults)."""
    d, t = args.data, args.task
    return run.build_parser(option).parse_args([
        "--option", option, "--batch_size", str(args.batch_size),
        "--train", str(d / f"{t}-train.txt"), "--dev", str(d / f"{t}-dev.txt"),
        "--test", str(d / f"{t}-test.txt"), "--label-names", str(d / f"{t}-label-mapping.json")])


def loss_of(model, batch, seed):
    torch.manual_seed(seed)                     # the same dropout draws packed and padded
    start = time.perf_counter()
    loss, _ = classifier.classification_loss(model, batch)
    loss.backward()
    return time.perf_counter() - start, loss.item()


def bench(option, args):
    flags = run_args(option, args)
    flags.device = torch.device("cpu")
    names = data.read_label_names(flags.label_names)
    train = data.read_examples(flags.train, num_labels=len(names), flag="--train")
    llama, tokenizer = scoring.load_model(None, flags.device)
    model = run_classifier.build_head_classifier(flags, llama, tokenizer, names).train()
    seqs = classifier.encode_split(train, tokenizer, None, flags.prompt_template, names)
    labels = [e.label for e in train]
    pack_len = max(len(s) for s in seqs)
    batches = data.Batches(seqs, labels, flags.batch_size, tokenizer.pad_id, seed=flags.seed,
                           shuffle=True)
    times, slots, real = {"padded": [], "packed": []}, {"padded": 0, "packed": 0}, 0
    for step, batch in zip(range(-1, args.steps), batches):        # step -1: the warm-up
        ids = [seqs[i] for i in batch["index"]]
        packed = classifier.packed_batch(ids, batch["labels"].tolist(), tokenizer.pad_id, pack_len)
        losses = []
        for side, b in (("padded", batch), ("packed", packed)):
            seconds, loss = loss_of(model, b, seed=step + 1)
            model.zero_grad(set_to_none=True)
            losses.append(loss)
            if step >= 0:
                times[side].append(seconds)
                slots[side] += b["tokens"].numel()
        real += sum(len(s) for s in ids) if step >= 0 else 0
        if abs(losses[0] - losses[1]) > 1e-4 * max(1.0, abs(losses[0])):
            raise SystemExit(f"step {step}: packed loss {losses[1]} != padded {losses[0]}")
        if step >= 0:
            print(f"{option} step {step}: padded {times['padded'][-1]:.2f} s, packed "
                  f"{times['packed'][-1]:.2f} s", flush=True)
    med = {side: statistics.median(t) for side, t in times.items()}
    return {"option": option, "steps": len(times["padded"]), "seconds": times,
            "median_s": med, "ratio": med["padded"] / med["packed"],
            "slots_per_token": {side: n / real for side, n in slots.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cfimdb")
    parser.add_argument("--task", default="cfimdb", help="files TASK-train.txt, TASK-label-mapping.json")
    parser.add_argument("--batch_size", type=int, default=10)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--options", default="finetune,lora")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench(option, args) for option in args.options.split(",")]
    print("| option | steps | padded s/step | packed s/step | slots per real token, padded / packed | padded / packed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = r["slots_per_token"]
        print(f"| {r['option']} | {r['steps']} | {r['median_s']['padded']:.2f} | "
              f"{r['median_s']['packed']:.2f} | {s['padded']:.2f} / {s['packed']:.2f} | "
              f"{r['ratio']:.2f}x |")
    if args.json:
        atomic.save_json_atomic(Path(args.json), {"rows": rows, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
