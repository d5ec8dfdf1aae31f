"""Tests for baselines.py: multinomial naive Bayes.

Run: .venv/bin/pytest tests/test_baselines.py -q   (CPU, under a second)

Oracles: probabilities worked out by hand on a two-document corpus; sklearn's MultinomialNB
(alpha 1) on CountVectorizer counts of the same \\w+ words.
"""
import numpy as np
import pytest

import baselines


def test_naive_bayes_on_hand_counts():
    train_ex = [{"text": "goal match goal", "label": 0}, {"text": "vote law", "label": 1}]
    # "goal": p(w|0) = (2+1)/(3+4), p(w|1) = 1/(2+4); priors equal -> class 0; "law" -> class 1
    test_ex = [{"text": "goal", "label": 0}, {"text": "law unseen", "label": 1}]
    assert baselines.naive_bayes_accuracy(train_ex, test_ex) == 1.0


def test_naive_bayes_matches_sklearn():
    """Oracle: sklearn's MultinomialNB (alpha 1) on CountVectorizer counts of the same \\w+ words."""
    sk_nb = pytest.importorskip("sklearn.naive_bayes")
    sk_text = pytest.importorskip("sklearn.feature_extraction.text")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    make = lambda n: [{"id": i, "text": " ".join(rng.choice(words, 8)), "label": int(i % 3)}  # noqa: E731
                      for i in range(n)]
    train_ex, test_ex = make(60), make(25)
    ours = baselines.naive_bayes_predict(train_ex, test_ex)
    vectorizer = sk_text.CountVectorizer(token_pattern=r"\w+", lowercase=True)
    x_train = vectorizer.fit_transform([e["text"] for e in train_ex])
    model = sk_nb.MultinomialNB(alpha=1.0).fit(x_train, [e["label"] for e in train_ex])
    assert ours == model.predict(vectorizer.transform([e["text"] for e in test_ex])).tolist()
