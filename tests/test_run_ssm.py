"""Tests for run_ssm.py: tokens, the tokenizer cache, naive Bayes, timing, the CLI.

Run: .venv/bin/pytest tests/test_run_ssm.py -q   (CPU, about fifteen seconds)

Oracles: hand-computed ids (bos + UTF-8 bytes + 2) and truncation; SentencePiece's own decode of
the ids; the bytes of a freshly trained model for the cache (reused as is, rebuilt after it is
cut short or overwritten); hand counts for naive Bayes; a power law for the log-log slope; files
on disk (CSV rows, results JSON, figures, table) for the CLI through run.py's flags.
"""
import argparse
import csv
import json

import pytest
import torch

import run_ssm

TEXTS = [f"the {w} sat on the mat number {i}" for i, w in enumerate(["cat", "dog", "bird"] * 20)]


# ----------------------------------------------------------------------------
# tokens and the tokenizer cache

def test_bytes_get_bos_and_are_cut_to_max_len():
    tokenizer = run_ssm.ssm_tokenizer(argparse.Namespace(tokenizer="bytes"), [])
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.vocab_size) == (0, 1, 258)
    assert run_ssm.encode_all(tokenizer, ["hé"], 10) == [[1, ord("h") + 2, 0xC3 + 2, 0xA9 + 2]]
    assert run_ssm.encode_all(tokenizer, ["abcdef", ""], max_len=3) == [[1, 99, 100], [1]]


def test_sentencepiece_is_trained_cached_and_reused(tmp_path):
    sp = run_ssm.sentencepiece_tokenizer(TEXTS, vocab_size=300, cache_dir=tmp_path)
    [ids] = run_ssm.encode_all(sp, ["the cat sat"], 128)
    assert ids[0] == sp.bos_id == 2 and sp.pad_id == 0 and all(0 < i < sp.vocab_size for i in ids)
    assert sp.processor.decode(ids[1:]) == "the cat sat"
    cached = list(tmp_path.glob("spm-300-*.model"))
    assert len(cached) == 1 and cached[0].read_bytes() == sp.model_proto
    again = run_ssm.sentencepiece_tokenizer(TEXTS, 300, cache_dir=tmp_path)
    assert again.model_proto == sp.model_proto and again.encode("dog") == sp.encode("dog")
    folded = run_ssm.sentencepiece_tokenizer(TEXTS, 300, cache_dir=tmp_path, case_fold=True)
    assert folded.encode("THE CAT") == folded.encode("the cat")       # another cache entry
    assert len(list(tmp_path.glob("spm-300-*.model"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, damage):
    sp = run_ssm.sentencepiece_tokenizer(TEXTS, vocab_size=300, cache_dir=tmp_path)
    [path] = tmp_path.glob("spm-300-*.model")
    good = path.read_bytes()
    with open(path, "r+b") as f:            # damage it in place, as a crash or a disk would
        if damage == "truncate":
            f.truncate(len(good) // 2)
        else:
            f.write(b"\x0a\x03bad")
    rebuilt = run_ssm.sentencepiece_tokenizer(TEXTS, 300, cache_dir=tmp_path)
    assert rebuilt.encode("the bird sat") == sp.encode("the bird sat")
    assert [p.read_bytes() for p in tmp_path.glob("spm-300-*.model")] == [good]


# ----------------------------------------------------------------------------
# timing

def test_loglog_slope():
    rows = [{"L": L, "t": 3.0 * L ** 1.5} for L in (256, 512, 1024)]
    assert run_ssm.loglog_slope(rows, "t") == pytest.approx(1.5)


# ----------------------------------------------------------------------------
# the CLI on tiny files

def cli_args(tmp_path, option, **overrides):
    """The parsed flags of `run.py --option OPTION`, with the device run.py would set."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--option", default=option)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use_gpu", action="store_true")
    run_ssm.add_arguments(parser, option)
    rows = [{"id": i, "text": ("sport goal " if i % 2 else "vote law ") * (1 + i % 3), "label": i % 2}
            for i in range(24)]
    for name in ("train", "val", "test"):
        (tmp_path / f"{name}.json").write_text(json.dumps(rows), encoding="utf-8")
    argv = ["--train", str(tmp_path / "train.json"), "--val", str(tmp_path / "val.json"),
            "--test", str(tmp_path / "test.json"), "--out_dir", str(tmp_path / "out"),
            "--tokenizer", "bytes", "--d_model", "8", "--n_layers", "1", "--d_state", "4",
            "--epochs", "1", "--batch_size", "8", "--max_len", "16", "--no_progress"]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    args = parser.parse_args(argv)
    args.device = torch.device("cpu")
    return args


def test_cli_s4_writes_submission_results_and_curves(tmp_path):
    run_ssm.main(cli_args(tmp_path, "s4"))
    out = tmp_path / "out"
    with open(out / "submission.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(24)]
    results = json.loads((out / "s4-results.json").read_text())
    assert results["epochs_run"] == 1 and 0 <= results["test_accuracy"] <= 1
    assert (results["tokenizer"], results["device"]) == ("bytes", "cpu")
    assert (out / "s4-curves.png").stat().st_size > 0


def test_cli_compare_writes_table_and_plots(tmp_path):
    run_ssm.main(cli_args(tmp_path, "ssm_compare", bench_lengths="16,32,64"))
    out = tmp_path / "out"
    table = (out / "compare.md").read_text()
    assert "naive Bayes" in table and "slope" in table and "| mamba (mamba, init s4d-real)" in table
    for name in ("compare-curves.png", "time-vs-length.png", "ssm-curves.png", "s4-curves.png",
                 "mamba-curves.png", "mamba-submission.csv"):
        assert (out / name).stat().st_size > 0


def test_cli_rejects_out_of_range_val_label(tmp_path):
    args = cli_args(tmp_path, "s4")
    (tmp_path / "val.json").write_text(json.dumps([{"id": 0, "text": "a", "label": 5}]))
    with pytest.raises(ValueError, match=r"val.json: row 1: label 5 is outside 0..1"):
        run_ssm.main(args)


def test_run_py_dispatches_ssm_to_run_ssm(tmp_path):
    """run.py's table sends --option ssm here, with the device it picked."""
    import run
    args = cli_args(tmp_path, "ssm")
    run.main(["--option", "ssm", "--train", args.train, "--val", args.val, "--test", args.test,
              "--out_dir", args.out_dir, "--tokenizer", "bytes", "--d_model", "8",
              "--n_layers", "1", "--d_state", "4", "--epochs", "1", "--max_len", "16",
              "--no_progress"])
    results = json.loads((tmp_path / "out" / "ssm-results.json").read_text())
    assert results["layer"] == "ssm" and results["device"] == "cpu"
    assert (tmp_path / "out" / "submission.csv").is_file()


def test_run_py_ssm_layer_mamba_trains_and_writes_the_submission(tmp_path):
    """--option ssm --layer mamba: the same harness with mamba.py's block; --option s4 refuses
    --layer mamba in the parser (one line, exit 2) before any work."""
    import run
    args = cli_args(tmp_path, "ssm")
    flags = ["--train", args.train, "--val", args.val, "--test", args.test, "--out_dir",
             args.out_dir, "--tokenizer", "bytes", "--d_model", "8", "--n_layers", "1",
             "--d_state", "4", "--epochs", "1", "--max_len", "16", "--no_progress"]
    run.main(["--option", "ssm", "--layer", "mamba", *flags])
    out = tmp_path / "out"
    results = json.loads((out / "mamba-results.json").read_text())
    assert (results["layer"], results["config"]["init"]) == ("mamba", "s4d-real")
    assert results["config"]["bidirectional"] and 0 <= results["test_accuracy"] <= 1
    with open(out / "submission.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(24)]
    assert (out / "submission.csv").read_text() == (out / "mamba-submission.csv").read_text()
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "s4", "--layer", "mamba", *flags])
    assert exit_info.value.code == 2




def test_submission_covers_every_test_row(tmp_path):
    """A test file longer than the training and validation files: every id is in the CSV, in
    file order (oracle: the csv module on the ids written)."""
    args = cli_args(tmp_path, "ssm", epochs=1)
    rows = [{"id": f"x{i}", "text": "sport goal" if i % 2 else "vote law"} for i in range(31)]
    (tmp_path / "test.json").write_text(json.dumps(rows), encoding="utf-8")
    run_ssm.main(args)
    with open(tmp_path / "out" / "submission.csv") as f:
        written = list(csv.reader(f))
    assert [r[0] for r in written[1:]] == [f"x{i}" for i in range(31)]
