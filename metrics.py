"""Classification metrics over label strings: accuracy, macro-F1, the confusion matrix and its figure.

With gold labels y_i and predictions p_i over K labels (a prediction may be None: an answer the
parser could not read, which counts as wrong for every label):
    accuracy  = (1/n) sum_i [p_i == y_i]
    per label k:  precision_k = TP_k / (TP_k + FP_k),  recall_k = TP_k / (TP_k + FN_k),
                  F1_k = 2 precision_k recall_k / (precision_k + recall_k)   (0 when undefined)
    macro-F1  = (1/K) sum_k F1_k          every label weighs the same, however rare
                (Sokolova & Lapalme 2009, "A systematic analysis of performance measures for
                classification tasks", Table 3; sklearn's f1_score(average="macro") convention,
                zero_division=0)
    confusion[i][j] = #(gold = labels[i], predicted = labels[j]); a last column counts None.

Tests: tests/test_metrics.py (hand-computed examples; macro-F1 against a direct transcription of
the per-label definitions; sklearn's f1_score when it is installed).
"""
import plots


def accuracy(predictions, gold):
    """Fraction of exact matches; predictions and gold are equally long lists of labels."""
    if len(predictions) != len(gold) or not gold:
        raise ValueError(f"accuracy: {len(predictions)} predictions for {len(gold)} gold labels")
    return sum(p == g for p, g in zip(predictions, gold)) / len(gold)


def f1_per_label(predictions, gold, labels):
    """{label: F1} from true/false positives and false negatives (0 where undefined)."""
    scores = {}
    for k in labels:
        tp = sum(p == k and g == k for p, g in zip(predictions, gold))
        fp = sum(p == k and g != k for p, g in zip(predictions, gold))
        fn = sum(p != k and g == k for p, g in zip(predictions, gold))
        scores[k] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0   # = 2PR / (P + R)
    return scores


def macro_f1(predictions, gold, labels):
    """Mean of the per-label F1 over `labels` (the label set, not only those seen)."""
    scores = f1_per_label(predictions, gold, labels)
    return sum(scores.values()) / len(scores)


def confusion_matrix(predictions, gold, labels):
    """K x (K + 1) counts: row = gold label, column = predicted label, last column = None."""
    column = {k: j for j, k in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for p, g in zip(predictions, gold):
        matrix[column[g]][column.get(p, len(labels))] += 1
    return matrix


def classification_report(predictions, gold, labels):
    """The numbers every run reports: accuracy, macro-F1, unparsed count, confusion matrix."""
    return {"accuracy": accuracy(predictions, gold), "macro_f1": macro_f1(predictions, gold, labels),
            "unparsed": sum(p is None for p in predictions), "n": len(gold),
            "confusion": confusion_matrix(predictions, gold, labels), "labels": list(labels)}


def plot_confusion(matrix, labels, path, title=""):
    """Heatmap of a confusion matrix (counts written in the cells), PNG, atomically."""
    plt = plots.pyplot()
    has_unparsed = any(row[-1] for row in matrix)
    cells = [row if has_unparsed else row[:-1] for row in matrix]
    columns = list(labels) + (["(unparsed)"] if has_unparsed else [])
    size = 1.2 + 0.6 * len(columns)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(cells, cmap="Blues")
    for i, row in enumerate(cells):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path, dpi=90)
