"""A ``prediction.csv`` against a labels file: accuracy, and accuracy per class, so a local hold-out works
as a leaderboard."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sweeper.errors import SweeperError


def read_column_pairs(path: Path, value_columns: tuple[str, ...]) -> dict[str, str]:
    """``image_name -> value`` from a CSV with a header; the value column is the first of ``value_columns``
    present (``pred_label`` in predictions, ``label`` or ``pred_label`` in a labels file)."""
    if not path.is_file():
        raise SweeperError(f"{path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        column = next((c for c in value_columns if c in header), None)
        if "image_name" not in header or column is None:
            raise SweeperError(
                f"{path}: expected a header with image_name and one of {', '.join(value_columns)}; "
                f"got {header}"
            )
        out: dict[str, str] = {}
        for i, row in enumerate(reader, 2):
            name = row["image_name"]
            if name in out:
                raise SweeperError(f"{path}: line {i}: image_name {name!r} appears twice")
            out[name] = row[column]
    return out


@dataclass(frozen=True)
class Score:
    accuracy: float
    n: int
    per_class: dict[str, tuple[float, int]]  # class -> (accuracy, support)


def score(predictions: Path, labels: Path) -> Score:
    """Accuracy over every labelled image; an image without a prediction (or a label) is an error."""
    pred = read_column_pairs(predictions, ("pred_label",))
    truth = read_column_pairs(labels, ("label", "pred_label"))
    missing, extra = sorted(set(truth) - set(pred)), sorted(set(pred) - set(truth))
    if missing or extra:
        raise SweeperError(
            f"{predictions} and {labels} name different images: {len(missing)} without a prediction "
            f"(e.g. {missing[:3]}), {len(extra)} without a label (e.g. {extra[:3]})"
        )
    if not truth:
        raise SweeperError(f"{labels} has no rows")
    per: dict[str, list[int]] = {}
    for name, label in truth.items():
        per.setdefault(label, []).append(int(pred[name] == label))
    right = sum(sum(v) for v in per.values())
    return Score(
        right / len(truth), len(truth), {c: (sum(v) / len(v), len(v)) for c, v in sorted(per.items())}
    )
