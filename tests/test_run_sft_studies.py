"""Tests for run_sft_studies.py: `--option sft_compare` and `--option sweep` on a tiny Llama.

Run: .venv/bin/python -m pytest tests/test_run_sft_studies.py -q   (about a minute: child processes)

Oracles: run.py's own parser reading a child's argv back (the flags survive the trip); counts
worked out by hand for the majority and naive Bayes baselines on a toy split; the files each study
must write; the children's own summary.json (the table quotes them).
"""
import json
from types import SimpleNamespace

import pytest

import run
import sft
import run_sft_studies
from test_run_sft import base_folder, task  # noqa: F401  (shared fixtures)


def test_child_argv_round_trips_through_the_parser(tmp_path):
    argv = ["--option", "sweep", "--train", "t.txt", "--lora_rank", "8", "--no-zero_shot",
            "--max_len", "64", "--seed", "7"]
    args = run.build_parser("sweep").parse_args(argv)
    child = run_sft_studies.child_argv(args, run_sft_studies.sft_defaults(),
                                   {"lora_alpha": 2.0, "out_dir": str(tmp_path)})
    back = run.build_parser("sft").parse_args(child[2:])
    assert (back.train, back.lora_rank, back.lora_alpha, back.zero_shot, back.max_len, back.seed,
            back.out_dir) == ("t.txt", 8, 2.0, False, 64, 7, str(tmp_path))


def test_child_argv_carries_list_flags_and_children_run_in_the_callers_folder(tmp_path,
                                                                             monkeypatch):
    """--eval_data a b reaches the child as two paths (not one str(list)); the child runs in the
    caller's working folder, so relative paths mean what they meant to the caller."""
    argv = ["--option", "sweep", "--train", "t.txt", "--eval_data", "a.jsonl", "b.jsonl"]
    args = run.build_parser("sweep").parse_args(argv)
    child = run_sft_studies.child_argv(args, run_sft_studies.sft_defaults(),
                                       {"out_dir": str(tmp_path)})
    assert run.build_parser("sft").parse_args(child[2:]).eval_data == ["a.jsonl", "b.jsonl"]
    calls = []
    monkeypatch.setattr(run_sft_studies.subprocess, "run",
                        lambda argv, **kw: calls.append(kw) or SimpleNamespace(returncode=3))
    with pytest.raises(ValueError, match="exit 3"):
        run_sft_studies.run_child(args, "child", {})
    assert calls == [{}]


def toy_split():
    make = lambda i, text, answer: sft.Record(i, "text", text, "", answer, f"f:{i}")  # noqa: E731
    train = [make(0, "good fine good", "pos"), make(1, "good", "pos"), make(2, "bad awful", "neg")]
    val = [make(3, "good day", "pos"), make(4, "awful day", "neg"), make(5, "bad bad", "neg")]
    return {"train": train, "val": val}, ["neg", "pos"]


def test_majority_and_bag_of_words_baselines():
    splits, labels = toy_split()
    assert run_sft_studies.majority_baseline(splits, labels)["accuracy"] == pytest.approx(1 / 3)
    bow = run_sft_studies.bow_baseline(splits, labels)
    assert bow == {"accuracy": 1.0, "macro_f1": 1.0}


def test_run_row_best_accuracy_and_kept_model():
    """The best accuracy of any evaluation with its step; the kept model's scores beside it."""
    summary = {"parameters": {"trainable": 10, "formula": 10, "total": 100}, "peak_memory_mb": 1.0,
               "memory_kind": "cpu_max_rss", "epochs": [{"train_time_s": 4.0}],
               "val": {"accuracy": 0.65, "macro_f1": 0.39}}
    evals = [{"step": 40, "loss": 0.33, "accuracy": 0.65, "macro_f1": 0.39},
             {"step": 75, "loss": 0.34, "accuracy": 0.66, "macro_f1": 0.53},
             {"step": 90, "loss": 0.35, "accuracy": 0.66, "macro_f1": 0.50}]
    row = run_sft_studies.run_row("prompt", summary, {"evals": evals})
    assert (row["best_accuracy"], row["best_macro_f1"], row["best_step"]) == (0.66, 0.53, 75)
    assert (row["val_accuracy"], row["val_macro_f1"], row["s_per_epoch"]) == (0.65, 0.39, 4.0)
    no_evals = run_sft_studies.run_row("prompt", summary, {"evals": []})
    assert (no_evals["best_accuracy"], no_evals["best_step"]) == (0.65, None)


def test_sweep_writes_a_grid(base_folder, task, tmp_path, capsys):  # noqa: F811
    run.main(["--option", "sweep", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--pretrained-model-path", str(base_folder), "--ranks", "2", "--alphas", "0,8",
              "--lr", "3e-3", "--epochs", "1", "--lora_targets", "light", "--out_dir", str(tmp_path)])
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["rank"], r["alpha"]) for r in rows] == [(2, 0.0), (2, 8.0)]
    for r in rows:
        summary = json.loads((tmp_path / f"r2-alpha{r['alpha']:g}" / "summary.json").read_text())
        assert r["accuracy"] == summary["val"]["accuracy"]
    assert (tmp_path / "sweep-heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "Validation accuracy:" in (tmp_path / "sweep.md").read_text()


def test_compare_table_and_baselines(base_folder, task, tmp_path):  # noqa: F811
    run.main(["--option", "sft_compare", "--train", str(task / "train.txt"), "--val_ratio", "0.25",
              "--pretrained-model-path", str(base_folder), "--settings", "light,full",
              "--lr", "3e-3", "--epochs", "1", "--head_epochs", "3", "--out_dir", str(tmp_path)])
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [r["run"] for r in result["runs"]] == ["light", "full"]
    light, full = result["runs"]
    assert light["trainable"] == light["formula"] and full["formula"] is None
    assert full["trainable"] == full["total"] > light["trainable"]
    assert set(result["baselines"]) == {"majority", "bag-of-words naive Bayes",
                                        "frozen model + trained head", "S4 from scratch"}
    assert result["zero_shot"] is not None
    table = (tmp_path / "compare.md").read_text()
    assert "| light |" in table and "| S4 from scratch |" in table
    assert (tmp_path / "compare-curves.png").is_file()


def test_bad_study_flags(capsys):
    for argv, words in [(["--option", "sweep", "--train", "x", "--ranks", "0"], "--ranks"),
                        (["--option", "sft_compare", "--train", "x", "--settings", "huge"],
                         "--settings")]:
        with pytest.raises(SystemExit):
            run.main(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err


def tiny_peft_compare(base_folder, train, out, *extra):
    run.main(["--option", "peft_compare", "--train", str(train), "--val_ratio", "0.25",
              "--pretrained-model-path", str(base_folder), "--methods", "ia3,prefix",
              "--num_virtual_tokens", "4", "--epochs", "1", "--out_dir", str(out), *extra])
    return json.loads((out / "peft-compare.json").read_text())


def test_peft_compare_table_and_grouped_bars(base_folder, task, tmp_path):  # noqa: F811
    result = tiny_peft_compare(base_folder, task / "train.txt", tmp_path)
    assert [(r["run"], r["lr"]) for r in result["runs"]] == [("ia3", 3e-3), ("prefix", 1e-2)]
    for r in result["runs"]:
        summary = json.loads((tmp_path / r["run"] / "summary.json").read_text())
        assert summary["args"]["method"] == r["run"] and r["trainable"] == r["formula"]
    assert result["zero_shot"] is not None
    assert (tmp_path / "peft-compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        run.main(["--option", "peft_compare", "--train", str(task / "train.txt"),
                  "--method_lr", "prompt=fast"])


def test_resumed_study_keeps_finished_children(base_folder, task, tmp_path, monkeypatch,
                                                capsys):  # noqa: F811
    """--resume: children whose summary.json records the same flags and data are kept (no process
    starts; the table is rebuilt from them); a child asked for with another flag value (a budget
    too), or whose training file changed under the same name, runs again."""
    train = tmp_path / "train.txt"
    train.write_bytes((task / "train.txt").read_bytes())
    first = tiny_peft_compare(base_folder, train, tmp_path / "study")
    started = []

    def no_child(argv, **kwargs):
        started.append(argv)
        raise RuntimeError("a child process started")
    monkeypatch.setattr(run_sft_studies.subprocess, "run", no_child)
    assert tiny_peft_compare(base_folder, train, tmp_path / "study", "--resume") == first
    assert started == [] and capsys.readouterr().out.count("finished earlier with these") == 2
    with pytest.raises(RuntimeError):
        tiny_peft_compare(base_folder, train, tmp_path / "study", "--resume",
                          "--method_lr", "ia3=1e-3")
    assert len(started) == 1 and "--lr" in started[0] and "0.001" in started[0]
    with pytest.raises(RuntimeError):
        tiny_peft_compare(base_folder, train, tmp_path / "study", "--resume", "--seed", "7")
    assert len(started) == 2
    with pytest.raises(RuntimeError):               # more epochs: not the run that finished
        tiny_peft_compare(base_folder, train, tmp_path / "study", "--resume", "--epochs", "2")
    assert len(started) == 3
    train.write_text(train.read_text() + train.read_text().splitlines()[0] + "\n")
    with pytest.raises(RuntimeError):
        tiny_peft_compare(base_folder, train, tmp_path / "study", "--resume")
    assert len(started) == 4


def test_child_argv_carries_the_shared_training_flags(tmp_path):
    """--resume, --no_progress and the old --time_budget spelling survive the trip (oracle: the
    sft parser reading the child's argv back)."""
    argv = ["--option", "sweep", "--train", "t.txt", "--resume", "--no_progress",
            "--time_budget", "30", "--max_eval_examples", "5"]
    args = run.build_parser("sweep").parse_args(argv)
    child = run_sft_studies.child_argv(args, run_sft_studies.sft_defaults(),
                                       {"out_dir": str(tmp_path)})
    back = run.build_parser("sft").parse_args(child[2:])
    assert (back.resume, back.no_progress, back.time_budget_s, back.max_eval_examples) == \
        (True, True, 30.0, 5)
