"""Test metrics: accuracy, macro-F1, balanced accuracy, per-class figures, the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from imgpipe.io import atomic_path
from imgpipe.shards import ShardMember, load_prepared


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: list[str]) -> dict:
    """Overall figures and one entry per class (`per_class`, kept apart by evaluate).

    Balanced accuracy is the mean recall over the classes (sklearn's definition); a
    class absent from `y_true` counts as recall 0 rather than being left out.
    """
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),
        "balanced_accuracy": float(recall.mean()),
        "images": len(y_true),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(classes)},
    }


def per_class_table(metrics: dict) -> pd.DataFrame:
    """`classification_metrics(...)["per_class"]` as rows: class, precision, recall, f1,
    support (test images of the class)."""
    return pd.DataFrame([{"class": name, **figures}
                         for name, figures in metrics["per_class"].items()],
                        columns=["class", "precision", "recall", "f1", "support"])


def plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray,
                   classes: list[str]) -> None:
    """Confusion matrix as a PNG (rows: true class, columns: predicted), counts in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    side = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    axes.set_title(f"test accuracy {np.trace(matrix) / max(matrix.sum(), 1):.3f}")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def plot_prediction_grid(path: Path, images: list[ShardMember], actual: list[str],
                         predicted: list[str], max_images: int = 36) -> None:
    """Test images with true and predicted labels, misclassified first (red titles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(images)), key=lambda i: (actual[i] == predicted[i], i))
    shown = order[:max_images]
    columns = min(6, max(1, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, shown):
        axis.imshow(load_prepared(images[index]))
        wrong = actual[index] != predicted[index]
        axis.set_title(f"true {actual[index]}\npred {predicted[index]}", fontsize=8,
                       color="red" if wrong else "green")
    errors = sum(a != p for a, p in zip(actual, predicted))
    figure.suptitle(f"{errors} of {len(images)} test images misclassified (shown first)")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
