"""Benchmark: pico's streaming reader on a generated multi-GB text file (memory stays flat).

Writes a file of --size_gb GB made of TinyStories paragraphs repeated (default 2 GB, the size of
the full TinyStories train split), then streams it through data.iter_blocks with the byte or BPE
tokenizer and reports: bytes read, blocks produced, MB/s, and the process's peak RSS before and
after (resource.getrusage ru_maxrss). A reader that loaded the file would add ~size_gb to the RSS
(and ~8x that as int64 tokens).

    .venv/bin/python benchmarks/bench_pico.py [--size_gb 2] [--tokenizer byte|bpe] [--keep]

Prints one markdown line per run; paste it into benchmarks/issue5_results.md.
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atomic  # noqa: E402
import data  # noqa: E402
import pico  # noqa: E402
import run_pico  # noqa: E402
from tokenizer import ByteTokenizer  # noqa: E402


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_big_file(path, size_bytes):
    """size_bytes of TinyStories validation text repeated, streamed through atomic.write_atomic."""
    seed_text = (run_pico.TINYSTORIES / "valid.txt").read_text(encoding="utf-8").encode("utf-8")

    def write(f):
        written = 0
        while written < size_bytes:
            piece = seed_text[:size_bytes - written]
            f.write(piece)
            written += len(piece)
    atomic.write_atomic(path, write)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_gb", type=float, default=2.0, help="size of the generated file")
    parser.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte", help="tokenizer")
    parser.add_argument("--block_size", type=int, default=128, help="tokens per block")
    parser.add_argument("--chunk_bytes", type=int, default=1 << 20, help="reader piece size")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pico-bench-"))
    path = folder / "big.txt"
    start = time.perf_counter()
    write_big_file(path, int(args.size_gb * 2**30))
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    tokenizer = (ByteTokenizer() if args.tokenizer == "byte" else
                 pico.train_bpe_tokenizer([run_pico.TINYSTORIES / "train.txt"], 2048))
    rss_before, blocks, start = rss_mb(), 0, time.perf_counter()
    for _ in data.iter_blocks(path, tokenizer, args.block_size, args.chunk_bytes):
        blocks += 1
    seconds = time.perf_counter() - start
    size_mb = path.stat().st_size / 2**20
    print(f"| {args.tokenizer} | {size_mb / 1024:.2f} GiB | {blocks:,} blocks of "
          f"{args.block_size + 1} | {size_mb / seconds:.1f} MB/s | peak RSS {rss_before:.0f} -> "
          f"{rss_mb():.0f} MiB |", flush=True)
    if not args.keep:
        os.remove(path)
        folder.rmdir()


if __name__ == "__main__":
    main()
