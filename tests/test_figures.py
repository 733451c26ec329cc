"""Pictures of one run: files from lenet_sweep.training.figures, and the artifacts and metrics a real run logs."""

import csv

import numpy as np
import pytest

from conftest import TINY, all_runs, compose_cfg
from lenet_sweep.data import CLASS_NAMES
from lenet_sweep.training import figures

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    data = open(path, "rb").read()
    return data.startswith(PNG) and len(data) > 1000


def read_confusion(path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    return header[1:], [r[0] for r in rows], np.array([[int(v) for v in r[1:]] for r in rows])


def test_confusion_matrix_counts_and_per_class_accuracy():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    cm = figures.confusion_matrix(y_true, y_pred, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]] and cm.sum() == len(y_true)
    assert figures.per_class_accuracy(cm, ["a", "b", "c"]) == {"a": 0.5, "b": 1.0, "c": pytest.approx(2 / 3)}
    # a class without images has no accuracy (rather than 0/0)
    assert "c" not in figures.per_class_accuracy(figures.confusion_matrix([0, 1], [0, 0], 3), "abc")
    assert [figures.slug(n) for n in ("T-shirt/top", "Ankle boot")] == ["t_shirt_top", "ankle_boot"]


def test_write_run_figures_files(tmp_path):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 10, 300))
    images = rng.random((300, 28, 28, 1)).astype(np.float32)
    history = [{"loss": 1.0 / e, "accuracy": 1 - 0.5 / e, "val_loss": 1.2 / e, "val_accuracy": 1 - 0.6 / e}
               for e in (1, 2, 3)]
    accuracy = figures.write_run_figures(tmp_path, history, y_true, y_pred, images)
    for name in (figures.CURVES, figures.CONFUSION_PNG, figures.MISCLASSIFIED):
        assert is_png(tmp_path / name), name
    columns, rows, cm = read_confusion(tmp_path / figures.CONFUSION_CSV)
    assert columns == rows == list(CLASS_NAMES) and cm.sum() == 300
    assert accuracy == figures.per_class_accuracy(cm)
    assert (tmp_path / figures.PER_CLASS_CSV).read_text().startswith("class,images,correct,accuracy")


def test_tiny_run_logs_figures_and_per_class_accuracy(tmp_path, mlflow_uri, client):
    from lenet_sweep.training.train import train

    metrics = train(compose_cfg([*TINY, f"mlflow.tracking_uri={mlflow_uri}", "data.normalize=true",
                                 "model.activation=relu", "optimizer.lr=0.1"]))
    [run] = all_runs(client)
    files = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "figures")}
    expected = [figures.CURVES, figures.CONFUSION_PNG, figures.CONFUSION_CSV, figures.MISCLASSIFIED,
                figures.PER_CLASS_CSV]
    assert sorted(files) == sorted(f"figures/{n}" for n in expected)
    assert all(size > 0 for size in files.values())
    local = client.download_artifacts(run.info.run_id, "figures", str(tmp_path))
    for name in (figures.CURVES, figures.CONFUSION_PNG, figures.MISCLASSIFIED):
        assert is_png(f"{local}/{name}"), name
    columns, rows, cm = read_confusion(f"{local}/{figures.CONFUSION_CSV}")
    assert columns == rows == list(CLASS_NAMES)
    assert cm.sum() == 500  # data.test_limit=500: every evaluated test image, once
    # the same predictions as evaluate's accuracy (a rare float tie may flip between batch sizes)
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["test_accuracy"], abs=0.005)

    logged = run.data.metrics
    per_class = {n: logged[f"test_accuracy_{figures.slug(n)}"] for n in CLASS_NAMES}
    support = cm.sum(axis=1)
    for i, name in enumerate(CLASS_NAMES):
        assert per_class[name] == pytest.approx(cm[i, i] / support[i])
    assert logged["figures_seconds"] > 0
