"""Figures: matplotlib on the file-only Agg backend, each written whole through atomic.py.

matplotlib is imported on first use, so a command that draws nothing never loads it.
Tested in tests/test_atomic.py (a figure written atomically, no temporary file left).
"""
import atomic


def save_figure_atomic(fig, path, dpi=100):
    """A matplotlib figure as PNG, atomically; the figure is closed afterwards."""
    import matplotlib.pyplot as plt
    try:
        return atomic.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def grouped_bars(values, path, title, ylabel, ylim=(0, 1.05)):
    """values {group: {series: number}}: one cluster of bars per group, one bar (and colour) per
    series, each labelled with its value; PNG, atomically."""
    plt = pyplot()
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2, 4))
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [values[g].get(name, 0.0) for g in groups], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set(ylabel=ylabel, ylim=ylim, title=title)
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=90)
