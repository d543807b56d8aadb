"""Commands that use a trained model: predict (new images) and score (predictions against labels)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sweeper.cli.app import JsonOpt, TrackingOpt, _print_json, app, out_file, result, say, wants_json

if TYPE_CHECKING:
    from sweeper.submit.predictor import Member


@app.command("predict")
def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="A refit-best output folder, an MLflow model URI (runs:/ID/model, models:/NAME/1), or a "
            "study name (its newest refit)."
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files, or folders of images (searched at any depth).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The CSV to write: image_name,pred_label.")] = Path(
        "predictions.csv"
    ),
    probs: Annotated[bool, typer.Option("--probs", help="Add one probability column per class.")] = False,
    tracking_uri: TrackingOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Predict the class of new images with a refit, a soup or an ensemble."""
    import csv
    import time

    wants_json(json_)
    out_file(out)  # before the model loads (torch, a download)
    from sweeper.submit import predictor

    files = predictor.image_files(images)
    net, source = predictor.open_model(model, tracking_uri)
    say(
        f"predicting {len(files)} images with {source} "
        f"({len(net.members)} model(s), {len(net.classes)} classes)"
    )
    t0 = time.monotonic()

    def progress(i: int, m: Member) -> None:
        say(f"  model {i + 1}/{len(net.members)}: {m.cfg.backbone} ({time.monotonic() - t0:.0f} s)")

    p = net.probs(files, progress)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "pred_label", *([f"p_{c}" for c in net.classes] if probs else [])])
        for file, row in zip(files, p.tolist(), strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            w.writerow([file.stem, net.classes[best], *([f"{x:.6f}" for x in row] if probs else [])])
    result(f"wrote {out}")
    if json_:
        _print_json(
            {
                "out": str(out),
                "images": len(files),
                "model": source,
                "members": len(net.members),
                "classes": net.classes,
            }
        )


@app.command("score")
def score(
    predictions: Annotated[Path, typer.Argument(help="A prediction.csv (image_name,pred_label).")],
    labels: Annotated[Path, typer.Argument(help="The true labels: a CSV of image_name,label.")],
    per_class: Annotated[bool, typer.Option("--per-class", help="Also print each class's accuracy.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Accuracy of a prediction.csv against a labels file (a local hold-out as a leaderboard)."""
    from sweeper.submit import scoring

    s = scoring.score(predictions, labels)
    if wants_json(json_):
        per = {c: {"accuracy": acc, "n": n} for c, (acc, n) in s.per_class.items()}
        _print_json({"accuracy": s.accuracy, "n": s.n, "correct": round(s.accuracy * s.n), "per_class": per})
        return
    typer.echo(f"accuracy {s.accuracy:.4f} ({round(s.accuracy * s.n)}/{s.n} images)")
    if per_class:
        for c, (acc, n) in sorted(s.per_class.items(), key=lambda kv: kv[1][0]):
            typer.echo(f"  {c:<30} {acc:.4f}  ({n})")
