"""Tests for benchmarks/bench_export.py: the llama.cpp comparison of an exported GGUF.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_bench_export.py -q   (CPU, ~5 s)

Oracles: the file `run.py --option generate` writes at temperature 0 (the benchmark's "ours" must
be that text); without llama_cpp, the one-line contract (exit 0). setup.sh does not install
llama.cpp (it builds from source): a stand-in `llama_cpp` module, which decodes with our reader,
runs the script's llama.cpp branch end to end (export, ids compared, table, JSON), checking the
plumbing; where llama-cpp-python is installed, real llama.cpp decodes the tiny export to our ids.
"""
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import gguf_reader
import llama
import run
import run_generate
import sample
import weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_export  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_path):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, as an llmlab folder."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    metadata = weights.tokenizer_metadata(gguf_reader.read_gguf(default_model_path).metadata)
    torch.manual_seed(0)
    model = llama.Llama(llama.LlamaConfig.tiny(vocab_size=49152, dim=32, n_heads=2,
                                                       max_seq_len=256)).eval()
    weights.save_model_folder(folder, model.config, model.state_dict(),
                              {"kind": "gguf", "metadata": metadata})
    return folder


def test_without_llama_cpp_one_line_and_exit_0(monkeypatch, capsys):
    monkeypatch.setattr(bench_export, "have_llama_cpp", lambda: False)
    assert bench_export.main([]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [bench_export.INSTALL] and "pip install llama-cpp-python" in printed[0]


def test_ours_is_what_option_generate_writes(tiny_folder, tmp_path):
    low, high = tmp_path / "t0.txt", tmp_path / "t1.txt"
    run.main(["--option", "generate", "--pretrained-model-path", str(tiny_folder),
              "--max_new_tokens", "12", "--generated_sentence_low_temp_out", str(low),
              "--generated_sentence_high_temp_out", str(high)])
    mine = bench_export.ours(tiny_folder, run_generate.FRANKENSTEIN, 12, bench_export.CHAT)
    assert low.read_text() == run_generate.FRANKENSTEIN + mine["text"]
    assert len(mine["ids"]) == 12 and mine["tok_s"] > 0


class StandInLlama:
    """llama_cpp.Llama's calls the benchmark makes, answered by our reader on the same file."""

    def __init__(self, model_path, **kwargs):
        self.model, self.tok = weights.load_pretrained(model_path)

    def token_bos(self):
        return self.tok.bos_id if self.tok.bos_id is not None else -1

    def tokenize(self, text, add_bos, special):
        return self.tok.encode(text.decode("utf-8"), bos=add_bos)

    def generate(self, ids, **sampling):
        ids = list(ids)
        while True:
            with torch.no_grad():
                ids.append(int(self.model(torch.tensor([ids]))[0][0, -1].argmax()))
            yield ids[-1]

    def create_chat_completion(self, messages, max_tokens, **sampling):
        out = self.model.generate(self.tok.encode_chat(messages), max_tokens, sample.GREEDY,
                                  stop_tokens=self.tok.stop_ids)
        return {"choices": [{"message": {"content": self.tok.decode(out)},
                             "finish_reason": "stop" if len(out) < max_tokens else "length"}]}


def test_llama_cpp_branch_runs_end_to_end(tiny_folder, tmp_path, monkeypatch, capsys):
    stand_in = types.SimpleNamespace(Llama=StandInLlama, __version__="stand-in")
    monkeypatch.setitem(sys.modules, "llama_cpp", stand_in)
    result = tmp_path / "r.json"
    code = bench_export.main(["--model", str(tiny_folder), "--new_tokens", "8", "--threads", "1",
                              "--out_dir", str(tmp_path / "out"), "--json", str(result)])
    printed = capsys.readouterr().out
    assert code == 0 and "greedy ids equal: True (8 tokens)" in printed
    assert "| llama.cpp |" in printed and "prompt tokenized alike: True" in printed
    saved = json.loads(result.read_text())
    assert saved["same_ids"] and saved["ours"]["ids"] == saved["llama_cpp"]["ids"]
    assert (tmp_path / "out" / "export.gguf").is_file()


def test_real_llama_cpp_decodes_the_tiny_export_to_our_ids(tiny_folder, tmp_path, capsys):
    """Oracle: llama.cpp itself (skipped where llama-cpp-python is not installed, as in CI)."""
    pytest.importorskip("llama_cpp")
    code = bench_export.main(["--model", str(tiny_folder), "--new_tokens", "16", "--threads", "1",
                              "--out_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0 and "greedy ids equal: True (16 tokens)" in printed
    assert "prompt tokenized alike: True" in printed
