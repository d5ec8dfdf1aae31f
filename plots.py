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
