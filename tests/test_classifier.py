"""Tests for classifier.py: prompting scores, the last-non-pad-token head, LoRA freezing
(the command lines: tests/test_run_classifier.py).

Run: .venv/bin/pytest tests/test_classifier.py -q   (CPU, tiny random Llama, ~10 s)

Oracles: label log-likelihoods from one unpadded forward per example and label through the
model's own full logits (label_scores_reference); the head's logits for each example run alone
without padding; parameter snapshots before/after LoRA training.
"""
import zlib

import pytest
import torch

import classifier
import scoring
import data
import train

llama = pytest.importorskip("llama")


class WordTokenizer:
    """Hermetic fake tokenizer: one id per whitespace-separated word (crc32 hash), decode by table."""
    bos_id, eos_id, pad_id = 1, 2, 2

    def __init__(self, vocab_size):
        self.vocab_size, self.words = vocab_size, {}

    def encode(self, text, bos=False, eos=False):
        ids = []
        for word in text.split():
            ids.append(3 + zlib.crc32(word.encode()) % (self.vocab_size - 3))
            self.words[ids[-1]] = word
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids):
        return " ".join(self.words.get(i, "?") for i in ids if i > 2)


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return llama.Llama(llama.LlamaConfig.tiny()).eval()


def tokenizer_for(model):
    return WordTokenizer(model.tok_embeddings.weight.shape[0])


def test_head_reads_last_non_pad_token():
    """Padded batch logits == each example alone, unpadded (tolerance 1e-5: fp32 matmul order)."""
    model = classifier.LlamaEmbeddingClassifier(tiny_llama(), num_labels=3, hidden_dropout_prob=0.0).eval()
    seqs = [[1, 5, 6, 7, 8, 2], [1, 9, 2], [1, 10, 11, 2]]
    tokens, mask = data.pad_batch(seqs, pad_id=2)
    with torch.no_grad():
        batched = model(tokens, mask)                                                # (3, K)
        alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                           for s in seqs])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    # Left padding keeps the explicit mask (the right-padding shortcut drops it): same logits.
    longest = max(len(s) for s in seqs)
    left = torch.tensor([[2] * (longest - len(s)) + s for s in seqs])
    left_mask = torch.tensor([[0] * (longest - len(s)) + [1] * len(s) for s in seqs])
    assert scoring.is_right_padded(mask) and not scoring.is_right_padded(left_mask)
    with torch.no_grad():
        torch.testing.assert_close(model(left, left_mask), alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("label_names", [["bad", "good", "fine"], ["very bad", "good", "so so so"]])
def test_prompt_scores_match_unpadded_reference(label_names):
    """Batched, padded label scores (fast single-token path and the B*K path) == the oracle."""
    model = tiny_llama()
    tok = tokenizer_for(model)
    clf = classifier.LlamaZeroShotClassifier(model, tok, label_names)
    texts = ["a fine film", "dull", "one two three four five six seven", "great"]
    prompts = [clf.prompt_ids(t) for t in texts]
    batched = clf(prompts)                                                           # (4, K)
    with torch.no_grad():
        oracle = torch.stack([scoring.label_scores_reference(model, p, clf.label_ids)
                              for p in prompts])
    torch.testing.assert_close(batched, oracle, atol=1e-4, rtol=1e-4)
    preds = classifier.predict_prompting(clf, prompts, batch_size=3)
    assert preds == oracle.argmax(-1).tolist()


def test_calibrate_divides_by_content_free_probabilities():
    """Zhao et al. 2021: argmax_k p_k / p_cf_k, the oracle written with probabilities."""
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3]]))
    p_cf = torch.tensor([0.7, 0.2, 0.1])
    calibrated = classifier.calibrate(scores, torch.log(p_cf))
    oracle = torch.log(scores.softmax(-1) / p_cf)
    torch.testing.assert_close(calibrated, oracle, atol=1e-6, rtol=1e-6)
    assert calibrated.argmax(-1).tolist() == [1, 2]  # raw argmax would say [0, 0]


def test_head_input_prompt_starts_as_the_zero_shot_classifier():
    """With the head initialised from the label rows of the output matrix, the untrained head's
    logits are the zero-shot label logits, so both predict the same labels."""
    model = tiny_llama()
    tok = tokenizer_for(model)
    names = ["bad", "good", "fine"]
    zero_shot = classifier.LlamaZeroShotClassifier(model, tok, names)
    head = classifier.LlamaEmbeddingClassifier(model, len(names), hidden_dropout_prob=0.0).eval()
    classifier.init_head_from_labels(head, zero_shot.label_ids)
    examples = [data.Example(label=0, text=t, line=1) for t in ["a fine film", "dull", "one two three"]]
    seqs = classifier.encode_split(examples, tok, None, classifier.PROMPT_TEMPLATE, names)
    assert seqs == [zero_shot.prompt_ids(e.text) for e in examples]
    tokens, mask = data.pad_batch(seqs, pad_id=tok.pad_id)
    with torch.no_grad():
        logits = head(tokens, mask)                                                 # (3, K)
    scores = zero_shot(seqs)                                                        # (3, K)
    # log-softmax over the vocabulary only subtracts one number per row
    torch.testing.assert_close(logits - logits[:, :1], scores - scores[:, :1], atol=1e-4, rtol=1e-4)


def test_prompt_max_len_cuts_the_text_only():
    model = tiny_llama()
    clf = classifier.LlamaZeroShotClassifier(model, tokenizer_for(model), ["bad", "good"], max_len=2)
    assert clf.prompt_ids("w1 w2 w3 w4") == clf.prompt_ids("w1 w2")
    assert "bad or good" in clf.template.format(text="x", labels=classifier.join_label_names(["bad", "good"]))
    assert classifier.join_label_names(["a", "b", "c"]) == "a, b, or c"


def test_lora_trains_only_head_and_adapters():
    """After LoRA training, every base weight is bit-identical; head and adapter B moved."""
    pytest.importorskip("lora")
    model = classifier.LlamaEmbeddingClassifier(tiny_llama(), num_labels=2, hidden_dropout_prob=0.1)
    names = classifier.add_lora(model, rank=2, alpha=4.0)
    assert names and all(("wq" in n or "wv" in n) for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n.lower() or n.startswith("classifier_head") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seqs = [[1, 3 + i, 4 + i, 2] for i in range(8)]
    batches = data.Batches(seqs, [i % 2 for i in range(8)], batch_size=4, pad_id=2)
    train.fit(model, batches, classifier.classification_loss,
              train.TrainConfig(epochs=2, lr=1e-2, progress=False))
    for n, p in model.named_parameters():
        if p.requires_grad and (n.startswith("classifier_head") or "lora_b" in n.lower()
                                or "lora_B" in n):
            assert not torch.equal(p, before[n]), n
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n


# ----------------------------------------------------------------------------
# packing (--packing): the batch's examples end to end in rows, document masking (packing.py)

def random_prompts(seed, count=9, vocab=256):
    rng = __import__("random").Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 40))] for _ in range(count)]


def test_packed_batch_logits_equal_each_example_alone():
    """Oracle: each example alone, unpadded; packed rows hold several examples (fewer rows)."""
    model = classifier.LlamaEmbeddingClassifier(tiny_llama(), num_labels=3, hidden_dropout_prob=0.0).eval()
    for seed in range(3):
        seqs = random_prompts(seed)
        batch = classifier.packed_batch(seqs, [0] * len(seqs), pad_id=2, max_len=64)
        assert len(batch["rows"]) < len(seqs)                                   # it did pack
        with torch.no_grad():
            packed = classifier.batch_logits(model, batch)[0]                    # (B, K)
            alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                               for s in seqs])
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["finetune", "lora"])
@pytest.mark.parametrize("fuse", [False, True])
def test_packed_loss_dropout_and_every_gradient_equal_the_padded_batch(method, fuse):
    """Train mode, head dropout 0.3 drawn from the same seed: the packed batch's summed loss and
    every trainable gradient equal the right-padded batch's (sums in another order: 1e-5 of
    the largest entry)."""
    import fused
    model = classifier.LlamaEmbeddingClassifier(tiny_llama(), num_labels=2, hidden_dropout_prob=0.3)
    if method == "lora":
        classifier.add_lora(model, rank=2, alpha=4.0, targets="heavy")
        with torch.no_grad():                  # B = 0 would hide a wrong gradient through A
            for name, p in model.named_parameters():
                if "lora" in name.lower():
                    p.add_(torch.randn_like(p) * 0.1)
    else:
        model.requires_grad_(True)
    if fuse:
        fused.fuse(model.llama)
    model.train()
    seqs, labels = random_prompts(5, count=10), [i % 2 for i in range(10)]
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for batch in (data.Batches(seqs, labels, 10, pad_id=2).pad(seqs, labels),
                  classifier.packed_batch(seqs, labels, pad_id=2, max_len=64)):
        torch.manual_seed(11)
        loss, count = classifier.classification_loss(model, batch)
        results.append((loss.detach(), count, torch.autograd.grad(loss, params)))
    (loss, count, grads), (loss_ref, count_ref, grads_ref) = results[1], results[0]
    assert count == count_ref == 10
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))
