"""What a study ran as, in words: the study file's description is the file's, not the run's.

A study file describes the experiment its author planned ("Pretrained resnext50_32x4d on the reference
100-class dataset"); ``--set``, ``--epochs`` and ``--data`` change what actually trains. ``show``, the
report and the study's MLflow run say what ran first: the backbones the trials trained (from their
recorded configs; before any trial, those the study can sample), pretrained or not, the data folder,
and the command line's overrides. The file's description follows, marked as the file's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from sweeper.store import record as record_lib
from sweeper.study.spec import Study


@dataclass(frozen=True)
class AsRun:
    """The study as it ran."""

    models: tuple[tuple[str, int], ...]  # ("resnet10t, not pretrained", trials), most trials first
    from_trials: bool  # models are what trials trained (else what the study can sample: none ran yet)
    data: str  # the data root it ran on
    images: dict[str, int]  # per split, from the record ({} for an older study)
    classes: int | None
    overrides: tuple[str, ...]  # "--set backbone=resnet10t", "--data other/", "--epochs 1"
    file_description: str  # the study file's own `description:`


def of(spec: Study, rec: record_lib.StudyRecord | None, trials: Sequence[FrozenTrial]) -> AsRun:
    """The study ``spec`` (as it ran, overrides applied) with its record and trials, described."""
    ran = Counter(_model(_config(t)) for t in _own(trials))
    if ran:
        models = tuple(ran.most_common())
    else:  # nothing trained yet: what the study, overrides applied, can train
        planned = [_model(spec.resolve(p).flat()) for p in _backbone_rows(spec)]
        models = tuple((m, 0) for m in dict.fromkeys(planned))
    data = rec.data if rec is not None else {}
    return AsRun(
        models,
        bool(ran),
        str(data.get("root") or spec.data_root),
        dict(data.get("images") or {}),
        len(data["classes"]) if "classes" in data else None,
        tuple(flags(rec.overrides)) if rec is not None else (),
        spec.description.strip(),
    )


def flags(overrides: dict[str, Any]) -> list[str]:
    """The recorded command-line overrides as the flags that gave them."""
    sets = [f"--set {k}={_typed(v)}" for k, v in (overrides.get("set") or {}).items()]
    return sets + [f"--{k} {overrides[k]}" for k in ("epochs", "data", "name") if overrides.get(k)]


def _typed(v: object) -> str:
    """A value as typed on the command line (YAML): ``false``, not Python's ``False``."""
    return json.dumps(v) if isinstance(v, bool) or v is None else str(v)


def _own(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials of this study that recorded the config they trained (warm-start trials are another's)."""
    return [t for t in trials if record_lib.CONFIG in t.user_attrs and not record_lib.borrowed(t)]


def _backbone_rows(spec: Study) -> list[dict[str, Any]]:
    """One param row per backbone the study can sample, in every cell (as ``fetch-weights`` lists them)."""
    rows = [{"cell": c} for c in spec.cells] or [{}]
    choices = [{"backbone": b} for b in spec.space["backbone"].choices] if "backbone" in spec.space else [{}]
    return [{**r, **b} for r in rows for b in choices]


def _config(t: FrozenTrial) -> dict[str, Any]:
    cfg = record_lib.trial_config(t)
    return {} if cfg is None else cfg.flat()


def _model(flat: dict[str, Any]) -> str:
    """A backbone and where its weights came from: "resnet10t, not pretrained"."""
    if not flat.get("pretrained"):
        return f"{flat.get('backbone')}, not pretrained"
    source = f" from {flat['weights_file']}" if flat.get("weights_file") else ""
    return f"{flat.get('backbone')}, pretrained{source}"


def summary(a: AsRun) -> str:
    """One sentence: "As run: resnet10t, not pretrained (6 trials); data other/ (3 classes, 30 train /
    15 val / 6 test images); the command line changed the study file: --set backbone=resnet10t ..."."""
    if a.from_trials:
        models = "; ".join(f"{m} ({n} trial{'s' if n != 1 else ''})" for m, n in a.models)
    else:
        models = (
            " or ".join(m for m, _ in a.models)
            + " (as the study defines it: no trial recorded its config yet)"
        )
    images = " / ".join(f"{n} {split}" for split, n in a.images.items())
    sizes = ", ".join(
        x for x in (f"{a.classes} classes" if a.classes else "", images and f"{images} images") if x
    )
    changed = (
        f"; the command line changed the study file: {' '.join(a.overrides)}"
        if a.overrides
        else "; no command-line overrides"
    )
    return f"As run: {models}; data {a.data}" + (f" ({sizes})" if sizes else "") + changed + "."


def file_note(a: AsRun) -> str | None:
    """The study file's description, marked as the file's (and as changed, when overrides changed it)."""
    if not a.file_description:
        return None
    which = " (the file's words; the overrides above change what ran)" if a.overrides else ""
    return f'The study file\'s description{which}: "{a.file_description}"'


def description(a: AsRun) -> str:
    """The study's MLflow description: what ran, then the file's own words."""
    note = file_note(a)
    return summary(a) + (f"\n\n{note}" if note else "")


def tags(a: AsRun) -> dict[str, str]:
    """Searchable tags of the study's MLflow run: backbones, pretrained, data and overrides."""
    names = [m for m, _ in a.models]
    pretrained = {("not pretrained" not in m) for m in names}
    return {
        "sweeper.backbones": ", ".join(dict.fromkeys(m.split(",")[0] for m in names)),
        "sweeper.pretrained": "mixed" if len(pretrained) > 1 else str(pretrained.pop()).lower(),
        "sweeper.data": a.data,
        "sweeper.overrides": " ".join(a.overrides) or "none",
    }
