"""Seed 001's sentiment classifiers on a pretrained Llama: zero-shot prompting, fine-tuning, LoRA.

Zero-shot prompting (`--option prompt`; Radford et al. 2019 "Language Models are Unsupervised
Multitask Learners", Sec. 3; Brown et al. 2020, arXiv:2005.14165, Sec. 2). The text x goes into a
prompt listing the K label names; label k with tokens (y_1..y_m) scores its log-likelihood as the
continuation, and the prediction is the best-scoring label:
    score_k(x) = sum_{j=1..m} log softmax(W_out h_{n-1+j})[y_j]      n = prompt length
    yhat = argmax_k score_k(x)
where h_t is the final-norm hidden state at position t of prompt + label. Single-token labels
need one forward pass of the prompt alone (m = 1: h_{n-1} is the prompt's last token).
Optional contextual calibration (--calibrate; Zhao et al. 2021, arXiv:2102.09690):
    yhat = argmax_k p_k(x) / p_k(content-free), p = softmax over the K label scores.

Classification head (`--option finetune` / `lora`; minllama's LlamaEmbeddingClassifier):
    h = hidden state of the LAST NON-PAD token, index n_b - 1 of row b   (B, dim)
        (packed, --packing: the batch's examples end to end in rows with document masking,
        packing.py; h is read at each example's last token, the same h without the padding)
    logits = W_c dropout(h) + b_c                                        (B, K)
    loss = cross-entropy(logits, y), summed and divided by the examples in the optimizer step.
finetune trains every parameter; lora freezes the Llama and trains the head plus LoRA adapters
W = W0 + (alpha / r) B A (Hu et al. 2021, arXiv:2106.09685, Sec. 4.1-4.2) on --lora_targets:
wq,wv by default, a seed-000 preset (light, medium, heavy) or Linear names in either spelling,
read by lora.resolve_targets.
What the head reads (--head_input):
    text    [bos] text [eos], head randomly initialised (minllama's create_data)
    prompt  (default) the zero-shot prompt of --option prompt; the head starts as the zero-shot
            classifier: W_c[k] = W_out[first token of " " + label k], b_c = 0, so training starts
            from the prompting accuracy instead of chance (the "verbalizer" init of prompt-based
            fine-tuning, Gao et al. 2021, arXiv:2012.15723, Sec. 4). On frozen SmolLM2 features a
            linear probe reached 0.542 dev on CFIMDB at eos and 0.817 at the prompt's end
            (benchmarks/probe_head_input.py).

Accuracy on a split whose gold labels are all one value (CFIMDB's test file: placeholder 0s)
is printed with a warning, since it only counts how often that label is predicted.

Shapes: B batch, T tokens, dim model width, V vocabulary, K labels, m label tokens.
The command lines (data, training, outputs) are in run_classifier.py.
Tests: tests/test_classifier.py (head on the last non-pad token == an unpadded single-example run;
the label-row head == zero-shot scores; LoRA trains only head and adapters); the label scores
themselves in tests/test_scoring.py.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
import lora
import metrics
import packing
import scoring

# minllama's prompt (run_llama.py's prompt_suffix); {labels} is e.g. "bad or good". On SmolLM2 it
# beat a "Review: ... Answer:" question and the chat template on dev subsets (benchmarks/issue3_results.md).
PROMPT_TEMPLATE = "{text} Is this movie {labels}? This movie is"
# Content-free inputs for calibration, as Zhao et al. 2021 use ("N/A", "", "[MASK]").
CONTENT_FREE = ("N/A", "", "[MASK]")


# ----------------------------------------------------------------------------
# pure functions: prompt text, calibration (pooling and label log-likelihoods: scoring.py)

def calibrate(scores, log_p_cf):
    """Contextual calibration (Zhao et al. 2021, arXiv:2102.09690, Sec. 5): with p the label
    distribution softmax_K(scores) and p_cf the same for content-free inputs ("N/A"), predict
    argmax_k p_k / p_cf_k, i.e. log_softmax(scores) - log p_cf.   scores (B, K), log_p_cf (K,)."""
    return F.log_softmax(scores.float(), dim=-1) - log_p_cf                          # (B, K)


def join_label_names(names):
    """["bad", "good"] -> "bad or good"; ["a", "b", "c"] -> "a, b, or c" (as minllama writes it)."""
    if len(names) <= 2:
        return " or ".join(names)
    return ", ".join(names[:-1]) + ", or " + names[-1]


def label_token_ids(tokenizer, label_names, style="plain"):
    """Token ids of each label as it follows the prompt: " good" in running text, "good" in chat."""
    prefix = " " if style == "plain" else ""
    return [tokenizer.encode(prefix + name, bos=False, eos=False) for name in label_names]


def prompt_ids(tokenizer, text, template, label_names, max_len=None, style="plain"):
    """Token ids of the prompt for text; the text alone is cut to max_len tokens."""
    if max_len is not None:
        ids = tokenizer.encode(text, bos=False, eos=False)
        if len(ids) > max_len:
            text = tokenizer.decode(ids[:max_len])
    prompt = template.format(text=text, labels=join_label_names(label_names))
    if style == "chat":
        return tokenizer.encode_chat([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt, bos=scoring.uses_bos(tokenizer), eos=False)


# ----------------------------------------------------------------------------
# modules

class LlamaZeroShotClassifier(nn.Module):
    """Frozen Llama scoring each label name as the continuation of a prompt.

    style "plain": the prompt is running text and a label follows it after a space (" good").
    style "chat": the prompt is the user turn of the tokenizer's chat template and a label is
    the first word of the assistant's reply ("good").
    """

    def __init__(self, llama, tokenizer, label_names, template=PROMPT_TEMPLATE, max_len=None,
                 style="plain"):
        super().__init__()
        if style not in ("plain", "chat"):
            raise ValueError(f"--prompt_style {style!r}: use plain or chat")
        self.llama = llama.requires_grad_(False)
        self.tokenizer, self.template, self.max_len = tokenizer, template, max_len
        self.label_names, self.style = list(label_names), style
        self.label_ids = label_token_ids(tokenizer, label_names, style)

    def prompt_ids(self, text):
        return prompt_ids(self.tokenizer, text, self.template, self.label_names, self.max_len,
                          self.style)

    @torch.no_grad()
    def forward(self, prompts):
        """prompts: B token lists -> (B, K) label log-likelihoods."""
        return scoring.label_scores(self.llama, prompts, self.label_ids, self.tokenizer.pad_id)

    @torch.no_grad()
    def content_free_log_probs(self, texts=CONTENT_FREE):
        """log p_cf (K,): label probabilities for content-free inputs, averaged (Zhao et al. 2021)."""
        scores = self([self.prompt_ids(t) for t in texts])                          # (n, K)
        return torch.log(torch.softmax(scores, dim=-1).mean(0))                      # (K,)


class LlamaEmbeddingClassifier(nn.Module):
    """Llama + dropout + linear head on the last non-pad token's hidden state."""

    def __init__(self, llama, num_labels, hidden_dropout_prob=0.3):
        super().__init__()
        self.llama = llama
        self.dropout = nn.Dropout(hidden_dropout_prob)
        dim = llama.tok_embeddings.weight.shape[1]
        self.classifier_head = nn.Linear(dim, num_labels)
        self.classifier_head.to(llama.tok_embeddings.weight.device)

    def forward(self, tokens, attention_mask):
        """tokens, attention_mask (B, T) -> logits (B, K)."""
        hidden = scoring.hidden_states(self.llama, tokens, attention_mask)           # (B, T, dim)
        pooled = scoring.pool_last_token(hidden, attention_mask)                     # (B, dim)
        return self.head(pooled)

    def forward_packed(self, batch):
        """A packed batch (packing.pack: the examples end to end in rows, document masking) ->
        logits (B, K) in example order: the same hidden state at each example's last token as
        unpacked, so the same logits, and the same dropout draws (pooled is (B, dim) either way)."""
        hidden = packing.hidden_states(self.llama, batch)                           # (R, L, dim)
        last = batch["last"].to(hidden.device)                                      # (B, 2)
        return self.head(hidden[last[:, 0], last[:, 1]])                            # (B, dim)

    def head(self, pooled):
        """pooled (B, dim) -> logits (B, K): dropout, then the linear head."""
        return self.classifier_head(self.dropout(pooled.float()))                    # (B, K)


def add_lora(classifier, rank, alpha, targets="wq,wv", dropout=0.0):
    """Freeze the Llama, inject LoRA adapters into `targets`; the head stays trainable.

    targets: a preset ("light", "medium", "heavy"), a comma list or a list of names in either
    spelling (lora.resolve_targets). Returns the wrapped module names; ValueError (listing the
    model's Linear names) when none matches. The LoraConfig stays on the classifier as
    `lora_config`, so the saved adapter describes what trained (dropout included).
    """
    classifier.llama.requires_grad_(False)
    config = lora.LoraConfig(r=rank, alpha=alpha, dropout=dropout, target_modules=targets)
    names = lora.inject_lora(classifier.llama, config)
    classifier.lora_config = config
    classifier.classifier_head.requires_grad_(True)
    return names


# ----------------------------------------------------------------------------
# training and evaluation on batches

def batch_logits(model, batch):
    """Logits (B, K) and labels (B,) of one batch dict (padded, or packed: packed_batch), on
    the model's device."""
    device = model.classifier_head.weight.device
    if "blocks" in batch:
        logits = model.forward_packed(batch)                                          # (B, K)
    else:
        logits = model(batch["tokens"].to(device), batch["attention_mask"].to(device))  # (B, K)
    return logits.float(), batch["labels"].to(device)                                # (B,)


def classification_loss(model, batch):
    """(summed cross-entropy, number of examples) for train.fit."""
    logits, labels = batch_logits(model, batch)
    return F.cross_entropy(logits, labels, reduction="sum"), labels.numel()


def packed_batch(sequences, labels, pad_id, max_len):
    """The batch data.Batches pads, packed into rows of <= max_len tokens (packing.pack: no
    padding, each example its own positions and block): {tokens, positions, blocks, last, ...,
    labels (B,)}, the class labels in example order."""
    no_loss = -1                        # pack's token labels are not used: one class per example
    batch = packing.pack([(ids, [no_loss] * len(ids)) for ids in sequences], pad_id, max_len, no_loss)
    return {**batch, "labels": torch.tensor(labels, dtype=torch.long)}                # (B,)


@torch.no_grad()
def predict_head(model, batches):
    """Predictions in input order and the mean cross-entropy over Batches (eval mode)."""
    was_training = model.training
    model.eval()
    preds, loss = {}, 0.0
    for batch in batches:
        logits, labels = batch_logits(model, batch)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        preds.update(zip(batch["index"], logits.argmax(-1).tolist()))
    model.train(was_training)
    return [preds[i] for i in range(len(preds))], loss / max(len(preds), 1)


@torch.no_grad()
def predict_prompting(classifier, prompts, batch_size, log_p_cf=None, desc="prompt"):
    """argmax label per prompt (calibrated when log_p_cf is given), similar lengths batched."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    preds = [0] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True):
        index = order[start:start + batch_size]
        scores = classifier([prompts[i] for i in index])                             # (B, K)
        if log_p_cf is not None:
            scores = calibrate(scores, log_p_cf)
        for i, p in zip(index, scores.argmax(-1).tolist()):
            preds[i] = p
    return preds


def accuracy(preds, examples):
    """metrics.accuracy of predicted label ids against the examples' gold labels."""
    return metrics.accuracy(preds, [e.label for e in examples])


def placeholder_labels_warning(examples, path):
    """A warning when every gold label is one value (CFIMDB's test file: all 0, placeholders);
    accuracy then only counts how often that label is predicted. None for a real split."""
    labels = {e.label for e in examples}
    if len(labels) != 1:
        return None
    return (f"warning: every gold label in {Path(path).name} is {labels.pop()}, so this accuracy "
            "measures nothing")


def encode_split(examples, tokenizer, max_len, template=None, label_names=None):
    """[bos] + text + eos, as minllama's create_data (the head reads the hidden state at eos);
    with a template, the zero-shot prompt of each text instead (the head reads its last token)."""
    if template is not None:
        return [prompt_ids(tokenizer, e.text, template, label_names, max_len) for e in examples]
    bos = scoring.uses_bos(tokenizer)
    return [data.encode_text(tokenizer, e.text, max_len, bos=bos, eos=True) for e in examples]


@torch.no_grad()
def init_head_from_labels(model, label_ids):
    """Head row k = the output-embedding row of label k's first token; bias 0 (zero-shot start)."""
    weight = scoring.lm_head_weight(model.llama)
    model.classifier_head.weight.copy_(torch.stack([weight[ids[0]] for ids in label_ids]).float())
    model.classifier_head.bias.zero_()


