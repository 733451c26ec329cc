"""Pictures of one run, written as files into a folder: training curves, the confusion matrix (PNG and
CSV), per-class accuracy and a grid of misclassified test images.

Plain numpy + matplotlib (Agg backend, no display needed); no MLflow, no TensorFlow here.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lenet_sweep.data import CLASS_NAMES

CURVES = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_CSV = "confusion_matrix.csv"
MISCLASSIFIED = "misclassified.png"
PER_CLASS_CSV = "per_class_accuracy.csv"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, also on machines without a display
    import matplotlib.pyplot as plt

    return plt


def slug(name: str) -> str:
    """``T-shirt/top`` -> ``t_shirt_top``: a metric-name-safe form of a class name."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int = 10) -> np.ndarray:
    """Counts ``[true, predicted]``; the matrix sums to the number of images."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """``{class name: recall}`` for every class that has at least one image (others are left out)."""
    support = cm.sum(axis=1)
    return {name: float(cm[i, i] / support[i]) for i, name in enumerate(class_names) if support[i]}


def training_curves(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training vs validation, side by side."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, label, style in (("", "train", "-o"), ("val_", "validation", "--s")):
            values = [h.get(prefix + key, np.nan) for h in history]
            ax.plot(epochs, values, style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if len(epochs) < 12:
        for ax in axes:
            ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_confusion(cm: np.ndarray, folder: Path, class_names: Sequence[str] = CLASS_NAMES) -> None:
    """``confusion_matrix.csv`` (rows: true class, columns: predicted) and its heat map."""
    with open(folder / CONFUSION_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, cm):
            writer.writerow([name, *(int(v) for v in row)])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=100)
    image = ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(cm.sum())} test images)")
    threshold = cm.max() / 2 if cm.size and cm.max() else 1
    for (i, j), value in np.ndenumerate(cm):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(folder / CONFUSION_PNG)
    plt.close(fig)


def misclassified_grid(images: np.ndarray, y_true: Sequence[int], y_pred: Sequence[int], path: Path,
                       class_names: Sequence[str] = CLASS_NAMES, count: int = 25) -> Path:
    """The first ``count`` misclassified images (5 per row), each labelled ``true -> predicted``.

    One mosaic image in one axes (not an axes per image): a fraction of the drawing time."""
    plt = _pyplot()
    all_wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))
    wrong = all_wrong[:count]
    cols, label = 5, 14  # images per row, pixels of label space above each image
    height, width = np.shape(images)[1:3]  # (N, H, W) or (N, H, W, C): channels shown as grey
    rows = max(1, -(-len(wrong) // cols))
    cell_h, cell_w = height + label, width + 4
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan, np.float32)
    fig, ax = plt.subplots(figsize=(cols * 1.9, rows * 2.1 + 0.4), dpi=100)
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        image = np.asarray(images[i], np.float32).reshape(height, width, -1).mean(axis=-1)
        span = float(image.max() - image.min()) or 1.0
        mosaic[r * cell_h + label:(r + 1) * cell_h, c * cell_w + 2:c * cell_w + 2 + width] = (
            (image - image.min()) / span)
        ax.text(c * cell_w + cell_w / 2, r * cell_h + label - 1.5,
                f"{class_names[y_true[i]]}\n-> {class_names[y_pred[i]]}", ha="center", va="bottom",
                fontsize=8, color="firebrick")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if not len(wrong):
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"misclassified test images, true -> predicted (first {len(wrong)} of {len(all_wrong)})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_run_figures(folder: Path, history: Sequence[Mapping[str, float]], y_true: Sequence[int],
                      y_pred: Sequence[int], images: np.ndarray,
                      class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Every picture of one run into ``folder``; returns the per-class test accuracy by class name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    accuracy = per_class_accuracy(cm, class_names)
    with open(folder / PER_CLASS_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", "correct", "accuracy"])
        for i, name in enumerate(class_names):
            writer.writerow([name, int(cm[i].sum()), int(cm[i, i]), accuracy.get(name, "")])
    training_curves(history, folder / CURVES)
    write_confusion(cm, folder, class_names)
    misclassified_grid(images, y_true, y_pred, folder / MISCLASSIFIED, class_names)
    return accuracy
