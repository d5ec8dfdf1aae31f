"""Classifiers without a neural network: the floor every trained model must clear.

Multinomial naive Bayes on bag-of-words counts (McCallum & Nigam 1998, "A Comparison of Event
Models for Naive Bayes Text Classification", Sec. 2.2), with Laplace smoothing alpha:
    log p(c | doc) = log prior_c + sum_w n_w log theta_cw,  theta_cw = (n_cw + alpha) / (n_c + alpha V)
n_w the count of word w in the document, n_cw its count in class c's training text, n_c all words
of class c, V the training vocabulary (unseen words are skipped).

Used by `--option ssm_compare` (run_ssm.py) and the sft studies (run_sft_studies.py).
Tested in tests/test_baselines.py: hand counts; sklearn's MultinomialNB on the same counts.
"""
import re

import numpy as np


def naive_bayes_predict(train_ex, test_ex, alpha=1.0):
    """Multinomial naive Bayes on lower-cased word counts, Laplace smoothing alpha (numpy only);
    -> the predicted label of every test example. Examples are dicts with "text" and int "label".

    log p(c | doc) = log prior_c + sum_w n_w log theta_cw,  theta_cw = (n_cw + alpha) / (n_c + alpha V)
    """
    words = lambda text: re.findall(r"\w+", text.lower())  # noqa: E731
    vocab = {w: i for i, w in enumerate(sorted({w for e in train_ex for w in words(e["text"])}))}
    C = 1 + max(e["label"] for e in train_ex)
    counts, prior = np.zeros((C, len(vocab))), np.zeros(C)
    for e in train_ex:
        prior[e["label"]] += 1
        np.add.at(counts[e["label"]], [vocab[w] for w in words(e["text"])], 1)
    log_theta = np.log((counts + alpha) / (counts.sum(1, keepdims=True) + alpha * len(vocab)))
    log_prior = np.log(np.maximum(prior, 1e-12) / prior.sum())
    return [int(np.argmax(log_prior + log_theta[:, [vocab[w] for w in words(e["text"]) if w in vocab]]
                          .sum(1))) for e in test_ex]


def naive_bayes_accuracy(train_ex, test_ex, alpha=1.0):
    """Accuracy of naive_bayes_predict against the test labels."""
    predictions = naive_bayes_predict(train_ex, test_ex, alpha)
    return sum(p == e["label"] for p, e in zip(predictions, test_ex)) / len(test_ex)
