"""The figures a finished trial leaves beside its weights: its confusion matrix and learning curves.

matplotlib (Agg, no display) is loaded with this module: the trials' fork server imports it once, so a
trial does not pay for it. Margins are set from the labels' length rather than measured by
``tight_layout``, which drew every figure twice (about 0.4 s a trial, as long as a tiny trial's training).
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

TICK_CHAR_IN = 0.06  # inches per character of a 7-pt tick label
LABEL_IN = 0.5  # inches for an axis label and its tick marks


def _margins(fig: Figure, label_chars: int) -> None:
    """Room for the axis labels and tick labels of ``label_chars`` characters; the colorbar to the right."""
    w, h = fig.get_size_inches()
    side = LABEL_IN + TICK_CHAR_IN * label_chars
    fig.subplots_adjust(left=side / w, bottom=side / h, right=1 - 0.1 / w, top=1 - 0.35 / h)


def write_confusion(out_dir: Path, confusion: np.ndarray, classes: tuple[str, ...]) -> None:
    """``confusion_matrix.png`` and ``per_class_accuracy.csv`` (worst classes first)."""
    support = confusion.sum(1)
    acc = np.divide(np.diag(confusion), support, out=np.zeros(len(classes)), where=support > 0)
    with open(out_dir / "per_class_accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy", "support", "most_confused_with"])
        for i in np.argsort(acc, kind="stable"):
            off = confusion[i].copy()
            off[i] = 0
            w.writerow(
                [
                    classes[i],
                    f"{acc[i]:.4f}",
                    int(support[i]),
                    classes[int(off.argmax())] if off.any() else "",
                ]
            )
    n = len(classes)
    fig, ax = plt.subplots(figsize=(min(4 + 0.12 * n, 20), min(3.5 + 0.12 * n, 19)))
    norm = confusion / np.maximum(support[:, None], 1)
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_title(f"confusion (row-normalized), accuracy {np.trace(confusion) / max(confusion.sum(), 1):.4f}")
    fig.colorbar(im, ax=ax)
    _margins(fig, max((len(c) for c in classes), default=0) if n <= 30 else len(str(n)))  # names, or numbers
    fig.savefig(out_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def write_curves(out_dir: Path, history: list[dict[str, float]]) -> None:
    """``history.csv`` and ``learning_curves.png`` (loss and accuracy per epoch)."""
    keys = sorted({k for h in history for k in h})
    with open(out_dir / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", *keys])
        for e, h in enumerate(history, 1):
            w.writerow([e, *(h.get(k, "") for k in keys)])
    epochs = range(1, len(history) + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, ax in (("loss", a1), ("acc", a2)):
        for split in ("train", "val"):
            ys = [h.get(f"{split}_{k}") for h in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, marker="o", label=f"{split}_{k}")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.96, wspace=0.18)
    fig.savefig(out_dir / "learning_curves.png", dpi=100)
    plt.close(fig)
