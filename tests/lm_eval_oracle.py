"""Run EleutherAI's lm-eval 0.4.13 offline on local files: the oracle of the evaluation harness
(tests/test_eval_vs_lm_eval.py) and the side it is timed against (benchmarks/bench_eval.py).
A helper module (no tests here); it imports lm_eval, so import it after
pytest.importorskip("lm_eval").

Each task is lm-eval's own YAML, included from the installed package (`include: <abs path>`, so
its prompts, targets and process_docs functions are lm-eval's), with only the dataset swapped for a
local file and both acc and acc_norm reported:

    include: .../lm_eval/tasks/arc/arc_easy.yaml
    task: llmlab_<name>
    dataset_path: json
    dataset_kwargs: {data_files: {test: <file>}, cache_dir: <temp folder>}
    test_split: test          (training/validation/fewshot splits: null)

run through lm_eval.simple_evaluate(model=HFLM(pretrained=<folder of the GGUF>,
gguf_file=<its name>, dtype="float32", device="cpu", batch_size=16), tasks=["llmlab_<name>"],
task_manager=TaskManager(include_path=<temp folder>, include_defaults=False), log_samples=True,
bootstrap_iters=0) with HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1. The same run from the shell
(tried by hand once; the CLI also bootstraps the stderr):
    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf --model_args
      pretrained=<folder>,gguf_file=<name>,dtype=float32 --device cpu --batch_size 16
      --include_path <folder of the YAMLs> --tasks llmlab_<name> --log_samples --output_path OUT
transformers dequantizes the GGUF itself, nothing is downloaded.

    score(layout, path)                -> [Doc per record, in file order]   (cached)
    score_many({name: (layout, path)}) -> {name: [Doc]}                   (one model load)
    load_model()                       -> the HFLM, to load once and time apart (benchmarks)

Results are cached per (layout, file contents, options) for the life of the process (a test
session); score_many runs all the uncached ones in one simple_evaluate call, and the HFLM is
loaded once per process.
"""
import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import lm_eval
from lm_eval.tasks import TaskManager

TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"
# llmlab's layout name -> lm-eval's YAML, relative to lm_eval/tasks (arc_challenge's YAML is
# arc_easy's with another dataset_name: one ai2_arc layout)
YAMLS = {"ai2_arc": "arc/arc_easy.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
         "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml",
         "hellaswag": "hellaswag/hellaswag.yaml", "boolq": "super_glue/boolq/default.yaml",
         "social_i_qa": "siqa/siqa.yaml"}
# every task reports both metrics (the winogrande, boolq and siqa YAMLs list acc alone)
METRICS = "metric_list:\n" + "".join(
    f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
    for m in ("acc", "acc_norm"))
# lm-eval's boolq reads super_glue's {"label": 0|1}; google/boolq's layout has {"answer": bool}
BOOLQ_ANSWER = 'doc_to_target: "{{answer|int}}"\n'


class Doc(NamedTuple):
    loglikelihoods: list   # per choice, lm-eval's summed log-likelihood (resps)
    acc: float             # lm-eval's per-document acc (1.0 / 0.0)
    acc_norm: float        # lm-eval's per-document acc_norm


_CACHE = {}     # (layout, file, contents, options) -> [Doc]
_MODELS = {}    # (gguf, batch size) -> HFLM; "folder" -> the scratch folder


def default_gguf():
    import weights
    return Path(weights.default_model_path())


def _key(layout, path, options):
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return (layout, str(Path(path).resolve()), digest, tuple(sorted(options.items())))


def _yaml(name, layout, path, cache_dir):
    text = Path(path).read_text(encoding="utf-8").lstrip()
    first = json.loads(text)[0] if text.startswith("[") else json.loads(text.splitlines()[0])
    fields = set(first)
    extra = BOOLQ_ANSWER if layout == "boolq" and "answer" in fields else ""
    return (f"include: {TASKS_DIR / YAMLS[layout]}\ntask: llmlab_{name}\ntag: []\n"
            f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    test: {json.dumps(str(Path(path).resolve()))}\n"
            f"  cache_dir: {json.dumps(str(cache_dir))}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n"
            "fewshot_split: null\n" + extra + METRICS)


def load_model(gguf_path=None, batch_size=16):
    """lm-eval's hf backend (HFLM) on the GGUF: transformers reads and dequantizes it, fp32, CPU."""
    from lm_eval.models.huggingface import HFLM
    gguf_path = Path(gguf_path or default_gguf())
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return HFLM(pretrained=str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32",
                device="cpu", batch_size=batch_size)


def _folder():
    """This process's scratch folder (task YAMLs, the datasets cache), removed at exit."""
    if "folder" not in _MODELS:
        _MODELS["folder"] = Path(tempfile.mkdtemp(prefix="lm-eval-oracle-"))
        atexit.register(shutil.rmtree, _MODELS["folder"], ignore_errors=True)
    return _MODELS["folder"]


def score_many(tasks, gguf_path=None, batch_size=16, limit=None, chat_template=False,
               max_length=None, model=None):
    """tasks {name: (layout, local JSON/JSONL file)} -> {name: [Doc per record, in file order]}.
    chat_template: lm-eval's --apply_chat_template; max_length: HFLM's max_length (None: the
    model config's, 8192 for SmolLM2); model: an HFLM from load_model, else this process's own
    (loaded once per GGUF and batch size, reused by every call)."""
    gguf_path = Path(gguf_path or default_gguf())
    options = dict(gguf=str(gguf_path), batch_size=batch_size, limit=limit,
                   chat_template=chat_template, max_length=max_length)
    keys = {name: _key(layout, path, options) for name, (layout, path) in tasks.items()}
    todo = {name: tasks[name] for name in tasks if keys[name] not in _CACHE}
    if not todo:
        return {name: _CACHE[keys[name]] for name in tasks}
    if model is None:
        if (gguf_path, batch_size) not in _MODELS:
            _MODELS[gguf_path, batch_size] = load_model(gguf_path, batch_size)
        model = _MODELS[gguf_path, batch_size]
    # HFLM.max_length returns _max_length when set, else the config's: the constructor's
    # max_length argument, set here per call so that one loaded model serves every call
    model._max_length = max_length
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    folder = Path(tempfile.mkdtemp(dir=_folder()))
    for name, (layout, path) in todo.items():
        Path(folder, f"{name}.yaml").write_text(
            _yaml(name, layout, path, _folder() / "datasets"), encoding="utf-8")
    out = lm_eval.simple_evaluate(
        model=model, tasks=[f"llmlab_{n}" for n in todo],
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        batch_size=batch_size, device="cpu", log_samples=True, limit=limit,
        apply_chat_template=chat_template, bootstrap_iters=0)
    for name in todo:
        docs = sorted(out["samples"][f"llmlab_{name}"], key=lambda d: d["doc_id"])
        _CACHE[keys[name]] = [Doc([float(r[0][0]) for r in d["resps"]], d["acc"],
                                  d["acc_norm"]) for d in docs]
    return {name: _CACHE[keys[name]] for name in tasks}


def score(layout, path, **options):
    """[Doc per record of the file, in file order]: lm-eval's per-choice log-likelihoods and
    per-document acc / acc_norm for a file of that layout (options: as score_many)."""
    return score_many({"task": (layout, path)}, **options)["task"]
