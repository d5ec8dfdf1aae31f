"""Run EleutherAI's lm-eval 0.4.13 offline on local files: the oracle of the evaluation harness
(tests/test_eval_vs_lm_eval.py) and the side it is timed against (benchmarks/bench_eval.py).

Each task is lm-eval's own YAML, included from the installed package (its prompts and its
preprocessing functions), with the dataset swapped for a local JSON-lines file; the model is the
hf backend in fp32 on the CPU, a GGUF loaded (dequantized) by transformers.
"""
import os
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

# every task reports both metrics (some of lm-eval's YAMLs list acc alone)
METRICS = "metric_list:\n" + "".join(
    f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
    for m in ("acc", "acc_norm"))
# llmlab's layout name -> lm-eval's YAML, relative to lm_eval/tasks
YAMLS = {"ai2_arc": "arc/arc_easy.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
         "piqa": "piqa/piqa.yaml", "winogrande": "winogrande/default.yaml",
         "hellaswag": "hellaswag/hellaswag.yaml", "boolq": "super_glue/boolq/default.yaml",
         "social_i_qa": "siqa/siqa.yaml"}


def run(tasks, folder, gguf_path, batch_size=16, limit=None):
    """tasks {name: (lm-eval YAML relative to lm_eval/tasks, local JSONL)} -> {name: [per
    document, in file order: (per-choice log-likelihoods, acc, acc_norm)]}."""
    folder, gguf_path = Path(folder), Path(gguf_path)
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    for name, (yaml, data) in tasks.items():
        (folder / f"{name}.yaml").write_text(
            f"include: {tasks_dir / yaml}\ntask: llmlab_{name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n"
            "fewshot_split: null\n" + METRICS, encoding="utf-8")
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={gguf_path.parent},gguf_file={gguf_path.name},"
        "dtype=float32", tasks=[f"llmlab_{n}" for n in tasks],
        task_manager=TaskManager(include_path=str(folder)), batch_size=batch_size, device="cpu",
        log_samples=True, limit=limit)
    result = {}
    for name in tasks:
        docs = sorted(out["samples"][f"llmlab_{name}"], key=lambda d: d["doc_id"])
        result[name] = [([float(r[0][0]) for r in d["resps"]], d["acc"], d["acc_norm"])
                        for d in docs]
    return result
