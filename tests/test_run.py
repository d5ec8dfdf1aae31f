"""Tests of run.py's own options (generate, one chat turn) and its error handling.

    .venv/bin/python -m pytest tests/test_run.py -q

Oracle: the default model's greedy continuation through Llama.generate directly (the CLI must
write exactly the prompt plus that text, and print seed 001's lines around it; --compile must
write the same files), and the one-line error contract (problem, file or flag, fix; never a
traceback); bad flags must fail before weights.load_pretrained is called (it is replaced by a
function that fails the test). The chat option's other modes and studies
are tested in tests/test_run_chat.py.
"""
import pytest
import torch

import fused
import run
import weights


def test_generate_writes_both_files(tmp_path, default_model_path, capsys):
    low, high = tmp_path / "t0.txt", tmp_path / "t1.txt"
    run.main(["--option", "generate", "--max_new_tokens", "6", "--prompt", "Once upon a time",
              "--generated_sentence_low_temp_out", str(low),
              "--generated_sentence_high_temp_out", str(high)])
    model, tok = weights.load_pretrained(default_model_path)
    with torch.no_grad():
        greedy = model.generate(tok.encode("Once upon a time", bos=tok.add_bos), 6,
                                stop_tokens=tok.stop_ids)
    assert low.read_text() == "Once upon a time" + tok.decode(greedy)
    assert high.read_text().startswith("Once upon a time")
    out = capsys.readouterr().out
    assert "Temperature is 0.0" in out and "Temperature is 1.0" in out
    assert (f"Temperature is 0.0\n{low.read_text()}\n---------------\n"
            f"Wrote generated sentence to {low}.\nTemperature is 1.0\n") in out
    assert out.endswith(f"{high.read_text()}\n---------------\n"
                        f"Wrote generated sentence to {high}.\n")


def test_generate_compiled_decode_writes_what_eager_writes(tmp_path, default_model_path,
                                                           monkeypatch):
    """--compile (the decode step as one torch.compile graph, fused.compile_decode) reaches the
    CLI and changes no token: both temperatures' files equal the eager run's. The eager backend
    traces the same graph without generating code (inductor's kernels: tests/test_fused.py)."""
    compiled, compile_decode = [], fused.compile_decode
    monkeypatch.setattr(fused, "compile_decode",
                        lambda model, **kw: compiled.append(kw) or compile_decode(model, **kw))
    files = {}
    for extra in ([], ["--compile", "--compile_backend", "eager"]):
        low, high = tmp_path / f"t0{len(extra)}.txt", tmp_path / f"t1{len(extra)}.txt"
        run.main(["--option", "generate", "--max_new_tokens", "5", "--prompt", "Once upon a time",
                  "--generated_sentence_low_temp_out", str(low),
                  "--generated_sentence_high_temp_out", str(high), *extra])
        files[bool(extra)] = (low.read_text(), high.read_text())
    assert compiled == [{"backend": "eager"}]       # once: both temperatures reuse the graph
    assert files[True] == files[False]


def test_chat_answers_with_the_template(default_model_path, capsys):
    run.main(["--option", "chat", "--prompt", "What is the capital of France?",
              "--max_new_tokens", "12"])
    out = capsys.readouterr().out
    assert "\nuser: What is the capital of France?\nassistant: " in out and "Paris" in out


@pytest.mark.parametrize("path, words", [("/no/such/model.gguf", "no such file"),
                                         ("BAD", "unknown checkpoint format")])
def test_bad_model_path_is_one_clear_line(tmp_path, capsys, path, words):
    if path == "BAD":
        path = tmp_path / "model.gguf"
        path.write_bytes(b"not a model at all")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", "generate", "--pretrained-model-path", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0]


@pytest.mark.parametrize("option, flag, value", [
    ("generate", "--top_p", "1.5"), ("generate", "--top_k", "-3"), ("generate", "--epsilon", "2"),
    ("chat", "--temperature", "-1"), ("generate", "--min_p", "5"), ("chat", "--temperature", "nan"),
    ("generate", "--max_new_tokens", "0"), ("chat", "--max_new_tokens", "0"),
    ("chat", "--top_p", "0"), ("generate", "--repetition_penalty", "0"),
    ("chat", "--repetition_penalty", "-1"), ("generate", "--repetition_penalty", "inf")])
def test_bad_sampling_flag_fails_in_one_line_before_loading(monkeypatch, capsys, option, flag,
                                                            value):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")
    monkeypatch.setattr(weights, "load_pretrained", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--option", option, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} {value}"), err


def test_unknown_option_value_is_rejected(capsys):
    with pytest.raises(SystemExit):
        run.main(["--option", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_sanity_check_passes_every_component():
    """sanity_check.py (without the slow default-model chat) exits 0 with no FAIL line."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "sanity_check.py"), "--skip_model"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and " 0 failed" in done.stdout
