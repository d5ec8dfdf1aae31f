"""Benchmark: how much a linear head can read from frozen features, at eos vs at the prompt's end.

For `--head_input text` (minllama: [bos] text [eos], the head reads eos) and `--head_input prompt`
(the zero-shot prompt, the head reads its last token), extract the frozen default model's hidden
state for seeded subsets of a classification task, then train only a linear head (AdamW, no
dropout) on the train features and report dev accuracy; for `prompt` also the head initialised
from the label rows before any training (= zero-shot prompting).

    .venv/bin/python benchmarks/probe_head_input.py --data ../shared/data/cfimdb --task cfimdb \
        [--train_n 400] [--dev_n 120] [--max_len 128] [--epochs 20] [--lr 1e-3]
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import classifier  # noqa: E402
import scoring  # noqa: E402
import data  # noqa: E402
import weights  # noqa: E402


@torch.no_grad()
def features(model, seqs):
    """Final-norm hidden state of each sequence's last token: (n, dim)."""
    rows = []
    for ids in seqs:
        tokens = torch.tensor([ids])
        rows.append(scoring.hidden_states(model, tokens, torch.ones_like(tokens))[0, -1])
    return torch.stack(rows)


def train_probe(X, y, num_labels, epochs, lr, batch=10, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(X.shape[1], num_labels)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(epochs):
        order = torch.randperm(len(X))
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(head(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/cfimdb", help="folder of the task files")
    parser.add_argument("--task", default="cfimdb", help="file prefix: TASK-train.txt, TASK-dev.txt, ...")
    parser.add_argument("--train_n", type=int, default=400)
    parser.add_argument("--dev_n", type=int, default=120)
    parser.add_argument("--max_len", type=int, default=128, help="tokens kept per text")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    folder = Path(args.data)
    names = data.read_label_names(folder / f"{args.task}-label-mapping.json")
    split = {s: data.subset(data.read_examples(folder / f"{args.task}-{s}.txt", len(names)), n, seed=1337)
             for s, n in (("train", args.train_n), ("dev", args.dev_n))}
    model, tokenizer = weights.load_pretrained(None)
    label_ids = classifier.label_token_ids(tokenizer, names)
    rows = torch.stack([scoring.lm_head_weight(model)[ids[0]] for ids in label_ids]).detach()
    y = {s: torch.tensor([e.label for e in split[s]]) for s in split}
    print(f"{args.task}: {args.train_n} train / {args.dev_n} dev, {args.max_len} tokens, labels {names}")
    print("| head input | zero-shot (label-row init, untrained) | linear probe dev acc |\n|---|---|---|")
    for kind in ("text", "prompt"):
        template = classifier.PROMPT_TEMPLATE if kind == "prompt" else None
        X = {s: features(model, classifier.encode_split(split[s], tokenizer, args.max_len, template,
                                                         names)) for s in split}
        head = train_probe(X["train"], y["train"], len(names), args.epochs, args.lr)
        acc = (head(X["dev"]).argmax(-1) == y["dev"]).float().mean().item()
        zero = ((X["dev"] @ rows.t()).argmax(-1) == y["dev"]).float().mean().item() if template else None
        print(f"| {kind} | {'-' if zero is None else f'{zero:.3f}'} | {acc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
