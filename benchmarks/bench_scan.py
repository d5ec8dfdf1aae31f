"""Benchmark: Mamba's selective scan, loop against chunked, beside S4D's FFT kernel, against L.

Measures, on random inputs:
  layer  forward+backward seconds of one layer for L in --lengths (run_ssm.time_vs_length, the
         same function as ssm_compare's figure): the basic SSM's loop scan and S4D's kernel + FFT
         convolution (H channels, N complex modes, shared parameters), and the Mamba mixer (H inner
         channels, N real states) with its loop scan and with its chunked scan; log-log slopes.
         A loop is skipped once its predicted time exceeds --loop_budget seconds.
  step   seconds per training step (forward, backward, AdamW) of the classifier of BENCHMARKS.md
         (d_model 128, 4 blocks, d_state 32) at --length for --step_layers
         (bench_ssm.time_training_step; Mamba keeps (batch, 256, L, 32) states per block for the
         backward pass: about 2 GB per block at L 1024, batch 8).

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/bench_scan.py \
        [--lengths 256,512,1024,2048,4096,8192] [--length 1024] [--step_layers s4d,mamba,ssm]
    small check: ... bench_scan.py --lengths 32,64 --length 32 --batch 2 --steps 1 --out /tmp/scan

Prints markdown tables; writes scan-time-vs-length.png and bench_scan.json under --out.
"""
import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atomic  # noqa: E402
import distributed  # noqa: E402
import run_ssm  # noqa: E402
from bench_ssm import time_training_step  # noqa: E402

STEP_NAMES = {"ssm": "basic SSM, loop scan", "s4d": "S4D, Vandermonde + FFT",
              "s4": "S4 DPLR, Cauchy + FFT", "mamba": "Mamba, chunked selective scan"}


def layer_table(rows, slopes):
    """Markdown: seconds per L for every timed layer, then the log-log slopes."""
    keys = list(run_ssm.TIMED)
    lines = ["| L | " + " | ".join(run_ssm.TIMED[k] for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = ["skipped" if r[k] is None else f"{r[k]:.4f}" for k in keys]
        lines.append(f"| {r['L']} | " + " | ".join(cells) + " |")
    lines.append("| log-log slope | " + " | ".join(run_ssm.slope_text(slopes[k]) for k in keys)
                 + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--lengths", default="256,512,1024,2048,4096,8192", help="L values of the layer timing")
    add("--H", type=int, default=64, help="channels of the timed layers (Mamba: inner channels)")
    add("--N", type=int, default=32, help="state size of the timed layers")
    add("--layer_batch", type=int, default=2, help="batch of the layer timing")
    add("--loop_budget", type=float, default=60.0, help="skip loop lengths predicted longer (s)")
    add("--length", type=int, default=1024, help="L of the training-step timing (0: skip it)")
    add("--batch", type=int, default=8, help="batch of the training-step timing")
    add("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    add("--step_layers", default="s4d,mamba", help="models of the training-step timing "
        "(comma-separated: ssm, s4d, s4, mamba; ssm takes about 13 s a step at L 1024)")
    add("--out", default="benchmarks/figures", help="folder for the PNG and JSON")
    add("--use_gpu", action="store_true", help="time on CUDA")
    args = parser.parse_args()
    device = distributed.pick_device(args.use_gpu)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}", flush=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = run_ssm.time_vs_length(lengths, H=args.H, N=args.N, batch=args.layer_batch,
                                  loop_budget_s=args.loop_budget, device=device)
    slopes = {k: run_ssm.loglog_slope(rows, k) for k in run_ssm.TIMED}
    out = Path(args.out)
    run_ssm.plot_time_vs_length(rows, out / "scan-time-vs-length.png")
    print(f"\nforward+backward seconds, H {args.H}, N {args.N}, batch {args.layer_batch}:\n")
    print(layer_table(rows, slopes))
    results = {"device": device.type, "threads": torch.get_num_threads(), "H": args.H,
               "N": args.N, "layer_batch": args.layer_batch, "time_vs_length": rows,
               "slopes": slopes, "length": args.length, "batch": args.batch, "step_s": {}}
    if args.length:
        for layer in args.step_layers.split(","):
            results["step_s"][layer] = time_training_step(layer, args.length, args.batch,
                                                          args.steps, device)
        print(f"\n| model (L={args.length}, batch {args.batch}) | s / training step |\n|---|---|")
        for layer, seconds in results["step_s"].items():
            print(f"| {STEP_NAMES[layer]} | {seconds:.3f} |")
    atomic.save_json_atomic(out / "bench_scan.json", results)
    print(f"\nwrote {out / 'scan-time-vs-length.png'} and {out / 'bench_scan.json'}")


if __name__ == "__main__":
    main()
