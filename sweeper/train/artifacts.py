"""Files written beside every result: resolved config, weights, predictions (figures: ``figures``).

A run can be reproduced, and its model used, from these files alone: ``config.yaml`` holds the full
trial config, the class names and the model's data config; the weights are safetensors.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from sweeper.study.config import TrialConfig, build_config

if TYPE_CHECKING:
    from sweeper.train.result import TrialResult


def to_plain(x: object) -> Any:
    """Plain YAML values: string keys, lists for tuples, Python numbers for numpy scalars."""
    if isinstance(x, dict):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def write_config(
    path: Path,
    cfg: TrialConfig,
    classes: tuple[str, ...],
    data_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    doc = {"trial": cfg.flat(), "classes": list(classes), "data_config": data_config, **(extra or {})}
    path.write_text(yaml.safe_dump(to_plain(doc), sort_keys=False))


def read_config(path: Path) -> tuple[TrialConfig, tuple[str, ...], dict[str, Any]]:
    """Inverse of :func:`write_config`: the trial config, class names and data config."""
    doc = yaml.safe_load(path.read_text())
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["trial"].items()}
    dcfg = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["data_config"].items()}
    return build_config(values), tuple(doc["classes"]), dcfg


def save_weights(path: Path, state_dict: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors, readable as the user's umask says (safetensors itself writes 0600, which
    another user or a serving container could not read)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    path.chmod(0o666 & ~umask())


def umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # the usual default, where /proc is not there


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_predictions(path: Path, files, probs, classes: tuple[str, ...]) -> None:
    """``image_name,pred_label``: the file name without extension, and the predicted class name."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_name", "pred_label"])
        for file, i in zip(files, probs.argmax(1).tolist(), strict=True):
            w.writerow([Path(file).stem, classes[i]])


def fold_file(fold: int) -> str:
    """The artifact name of fold ``fold``'s weights in a k-fold trial."""
    return f"fold-{fold}.safetensors"


def write_trial(out_dir: Path, cfg: TrialConfig, classes: tuple[str, ...], result: TrialResult) -> None:
    """Everything a finished trial leaves: config, best checkpoint, confusion, per-class CSV, curves."""
    extra = {"best_epoch": result.best_epoch, "best": result.best, "num_params": result.num_params}
    if result.fold_states:
        extra["fold_files"] = [fold_file(f) for f in range(len(result.fold_states))]
    also = getattr(result, "also_kept", {})  # checkpoint: both: the other metric's best epoch too
    if also:
        extra["also_kept"] = {
            k: {"epoch": e, "weights": f"best-{k}.safetensors"} for k, (e, _, _) in also.items()
        }
    write_config(out_dir / "config.yaml", cfg, classes, result.data_config, extra)
    if result.fold_states:  # k-fold: every fold's model is kept, for a fold ensemble at refit
        for f, state in enumerate(result.fold_states):
            save_weights(out_dir / fold_file(f), state, {"backbone": cfg.backbone, "fold": str(f)})
    else:
        save_weights(out_dir / "best.safetensors", result.state_dict, {"backbone": cfg.backbone})
        for k, (epoch, _, state) in also.items():
            save_weights(
                out_dir / f"best-{k}.safetensors", state, {"backbone": cfg.backbone, "epoch": str(epoch)}
            )
    from sweeper.train import figures  # matplotlib: the trials' fork server has it loaded already

    if result.confusion is not None:
        figures.write_confusion(out_dir, result.confusion, classes)
    figures.write_curves(out_dir, result.history)
    if result.sensitive:
        with open(out_dir / "sensitive_layers.csv", "w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["rank", "tensor", "grad_norm", "action"])
            for i, (name, score) in enumerate(result.sensitive, 1):
                w.writerow([i, name, f"{score:.6g}", cfg.sensitivity.action])
