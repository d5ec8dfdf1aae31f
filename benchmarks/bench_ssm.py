"""Benchmark: one training step of the loop-scan SSM (ssm.py) against S4 (s4.py), and time vs L.

Measures, on random tokens with the classifier of BENCHMARKS.md (d_model 128, 4 blocks, d_state 32):
  step    seconds per full training step (forward, backward, AdamW step) at --length for the
          basic SSM (layer "ssm", plain loop over time), S4D (diagonal, Vandermonde kernel + FFT)
          and S4 (DPLR, Cauchy kernel + FFT); the speedup of each FFT model over the loop
  layer   forward+backward seconds of one SSM layer (H 64, N 32, batch 2) for L in --lengths,
          loop scan vs kernel + FFT, with the log-log slopes (run_ssm.time_vs_length); the loop is
          skipped once its predicted time exceeds --loop_budget seconds
The loop model is timed over fewer steps (--loop_steps) because each takes seconds on a CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ssm.py [--length 1024] [--batch 8] \
        [--lengths 256,512,1024,2048,4096,8192] [--out benchmarks/figures]

Prints markdown tables (and writes ssm-time-vs-length.png + bench_ssm.json under --out).
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atomic  # noqa: E402
import distributed  # noqa: E402
import optimizer  # noqa: E402
import s4  # noqa: E402
import ssm  # noqa: E402
import run_ssm  # noqa: E402


def time_training_step(layer, length, batch, steps, device):
    """Median seconds of one optimizer step of the classifier on random tokens (after a warm-up)."""
    torch.manual_seed(0)
    config = ssm.SSMConfig(vocab_size=8000, layer=layer, d_model=128, n_layers=4, d_state=32,
                           init={"ssm": "random", "s4d": "s4d-legs", "s4": "legs",
                                 "mamba": "s4d-real"}[layer])
    model = s4.build_model(config).to(device)
    opt = optimizer.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(1, 8000, (batch, length), device=device)
    labels = torch.randint(0, 14, (batch,), device=device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(tokens), labels).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0 or steps == 1:   # the first step is a warm-up (one loop step is already long)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1024, help="L for the training-step timing")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the training step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps for the FFT models")
    parser.add_argument("--loop_steps", type=int, default=1, help="timed steps for the loop model")
    parser.add_argument("--lengths", default="256,512,1024,2048,4096,8192",
                        help="L values for the layer time-vs-length plot ('' to skip)")
    parser.add_argument("--loop_budget", type=float, default=60.0,
                        help="skip loop lengths predicted to take longer (s)")
    parser.add_argument("--out", default="benchmarks/figures", help="folder for the PNG and JSON")
    parser.add_argument("--use_gpu", action="store_true", help="time on CUDA")
    args = parser.parse_args()
    device = distributed.pick_device(args.use_gpu)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}", flush=True)
    results = {"device": device.type, "threads": torch.get_num_threads(), "length": args.length,
               "batch": args.batch, "step_s": {}}
    for layer in ("s4d", "s4", "ssm"):
        steps = args.loop_steps if layer == "ssm" else args.steps
        results["step_s"][layer] = time_training_step(layer, args.length, args.batch, steps, device)
        print(f"{layer}: {results['step_s'][layer]:.3f} s per training step", flush=True)
    loop = results["step_s"]["ssm"]
    print(f"\n| model (L={args.length}, batch {args.batch}) | s / training step | speedup vs loop |")
    print("|---|---|---|")
    for layer, name in (("ssm", "basic SSM, loop scan"), ("s4d", "S4D, Vandermonde + FFT"),
                        ("s4", "S4 DPLR, Cauchy + FFT")):
        t = results["step_s"][layer]
        print(f"| {name} | {t:.3f} | {loop / t:.1f}x |")
    if args.lengths:
        out = Path(args.out)
        rows = run_ssm.time_vs_length([int(x) for x in args.lengths.split(",")],
                                 loop_budget_s=args.loop_budget, device=device)
        slopes = {k: run_ssm.loglog_slope(rows, k) for k in ("loop_s", "fft_s")}
        run_ssm.plot_time_vs_length(rows, out / "ssm-time-vs-length.png")
        results.update(time_vs_length=rows, slopes=slopes)
        print("\n| L | loop scan fwd+bwd (s) | FFT fwd+bwd (s) | ratio |\n|---|---|---|---|")
        for r in rows:
            loop_s = "skipped" if r["loop_s"] is None else f"{r['loop_s']:.3f}"
            ratio = "-" if r["loop_s"] is None else f"{r['loop_s'] / r['fft_s']:.0f}x"
            print(f"| {r['L']} | {loop_s} | {r['fft_s']:.4f} | {ratio} |")
        print(f"log-log slopes: loop {slopes['loop_s']:.2f}, FFT {slopes['fft_s']:.2f}")
        atomic.save_json_atomic(out / "bench_ssm.json", results)


if __name__ == "__main__":
    main()
