"""What a study and its trials leave behind: attribute keys, counts, best trials, and the study record.

The study record is kept with the Optuna study (study user attributes, JSON) when the study is first
created: the study file's text, the study as it ran (overrides applied, in study-file syntax), the
``--set``/``--epochs``/``--data`` overrides, the data it ran on (root and fingerprint) and the versions of
the libraries. Every trial keeps its resolved config (:func:`config_json`). Refit, show and report read
this record,
never the study file as it is now, so every answer is the experiment that ran.

This module reads storage objects only; it imports none of the orchestration.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper import DISTRIBUTION
from sweeper.data.images import ImageFolderData
from sweeper.errors import SweeperError
from sweeper.study import objectives as objectives_lib
from sweeper.study import spec as spec_lib
from sweeper.study.starts import WARM  # a trial borrowed from another study by a warm start

# ---- trial user attributes ----------------------------------------------------------------------

NOT_COUNTED = "not_counted"  # why a FAIL trial does not count towards --trials
FAIL_REASON = "fail_reason"
FAIL_KIND = "fail_kind"  # oom / error / lost / interrupted
PRUNE_REASON = "prune_reason"
BEST_EPOCH = "best_epoch"
MLFLOW_RUN = "mlflow_run_id"
WORKER = "worker"  # host:pid/slot[/gpuN] that ran the trial
LOST = "worker_lost"  # the trial process died; its params were re-queued
OOM_RETRY = "oom_retry"  # how an out-of-memory trial was retried
INFEASIBLE = "infeasible"  # why a trial's result is infeasible (diverged)
RESUMED = "resumed_from_epoch"  # the epoch checkpoint a retried trial started from
DISCARDED = "checkpoint_discarded"  # why a retried trial's checkpoint was not resumed (it started over)
CONFIG = "config"  # the trial's resolved config, compact (config_json); trial_config reads it whole
CURVE = "curve"  # a multi-objective trial's metric per epoch (Optuna keeps intermediate values for one)
DIVERGED = "diverged"  # Optuna constraint on every finished trial: 1.0 = the loss diverged (infeasible)

# ---- study user attributes: the record ------------------------------------------------------------

RECORD = "sweeper:record"  # the study as it ran, overrides and versions
STUDY_FILE = "sweeper:study_file"  # the study file's text, as it was when the study was created
DATA = "sweeper:data"  # the data root and fingerprint

MEANING = ("objective", "objectives", "epochs", "fixed", "space", "constraints")
"""Study-file sections that define what a trial means; changing one on resume is refused."""


def counts(trials: list[FrozenTrial], before: int | None = None) -> dict[str, int]:
    """Trials by state; ``counted`` (complete and pruned trials) is what ``--trials N`` compares against.

    A failed trial does not count: after "fix it and re-run the command" the study still gets N trials
    that ran. Failures are reported as ``fail``; the sweep's failure stops guard against endless retries.

    Args:
        before: count only trials numbered below this (a retry's link to its lost original is still seen).
    """
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0, "not_counted": 0}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # re-queued lost trials
    for t in trials:
        if (before is not None and t.number >= before) or borrowed(t):
            continue
        if t.state == TrialState.FAIL and (t.user_attrs.get(NOT_COUNTED) or t.number in retried):
            out["not_counted"] += 1
        else:
            out[t.state.name.lower()] += 1
    out["counted"] = out["complete"] + out["pruned"]
    return out


def why(t: FrozenTrial) -> str:
    """How a finished trial ended, in words: its failure, prune or divergence reason, retries, resume."""
    notes = [t.user_attrs.get(k) for k in (FAIL_REASON, PRUNE_REASON, INFEASIBLE, OOM_RETRY)]
    if t.user_attrs.get(RESUMED):
        notes.append(f"resumed after epoch {t.user_attrs[RESUMED]}")
    return "; ".join(str(n) for n in notes if n)


def borrowed(t: FrozenTrial) -> bool:
    """A trial added from another study by a warm start: it informs the sampler, never counts or wins."""
    return WARM in t.user_attrs


def feasible(t: FrozenTrial) -> bool:
    return all(c <= 0 for c in t.constraints.values())


def run_state(t: FrozenTrial) -> str:
    """The state a trial's MLflow run has (tag ``state``): the trial's, INFEASIBLE for a diverged one."""
    if t.state == TrialState.COMPLETE and t.constraints.get(DIVERGED, 0.0) > 0:
        return "INFEASIBLE"
    return t.state.name


def primary(t: FrozenTrial) -> float | None:
    """A trial's value of the study's metric (its first objective); None when it has none."""
    return float(t.values[0]) if t.values else None


def top_trials(study: optuna.Study, k: int, direction: str) -> list[FrozenTrial]:
    """The ``k`` best complete trials that satisfy the study's constraints, best first, by the metric
    (a multi-objective study's first objective)."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if feasible(t) and primary(t) is not None and not borrowed(t)
    ]
    done.sort(key=lambda t: primary(t) or 0.0, reverse=direction == "maximize")
    if not done:
        raise SweeperError(f"study {study.study_name!r} has no complete trial yet; run more trials")
    return done[:k]


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The study's best trial of its own (borrowed warm-start trials never win).

    A multi-objective study has a Pareto front instead: choosing from it takes a rule (``--pick``).
    """
    if len(study.directions) > 1:
        raise SweeperError(
            f"study {study.study_name!r} trades off several objectives, so it has a Pareto front, not one "
            "best trial (`sweeper show` lists it): choose with --pick, e.g. "
            "--pick 'val_acc>=0.9,min:latency_ms'"
        )
    own = own_complete(study)
    if not own:
        raise SweeperError(
            f"study {study.study_name!r} has no complete trial of its own yet; run more trials"
        )
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(own, key=lambda t: primary(t) or 0.0)


def curve(t: FrozenTrial) -> dict[int, float]:
    """The metric per epoch as the trial reported it: Optuna's intermediate values, or for a
    multi-objective trial (which Optuna keeps none for) the copy in its attributes."""
    if t.intermediate_values:
        return dict(t.intermediate_values)
    return {int(k): float(v) for k, v in (t.user_attrs.get(CURVE) or {}).items()}


def own_complete(study: optuna.Study) -> list[FrozenTrial]:
    """Complete, feasible trials of the study's own (not borrowed by a warm start), in trial order."""
    done = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    return [t for t in done if not borrowed(t) and feasible(t) and primary(t) is not None]


def pareto_front(study: optuna.Study, objectives: list[tuple[str, str]]) -> list[FrozenTrial]:
    """The study's own trials that no other beats on every objective (borrowed trials excluded)."""
    own = [t for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]) if not borrowed(t)]
    return objectives_lib.front(own, objectives)


def trial_config(t: FrozenTrial) -> spec_lib.TrialConfig | None:
    """The config trial ``t`` trained with, as it recorded it (:func:`config_json`: its params, then what
    it kept of the rest; the defaults fill what neither holds); None for trials from before the record.
    A trial recorded whole, by an older sweeper, reads the same."""
    raw = t.user_attrs.get(CONFIG)
    if raw is None:
        return None
    params = {k: v for k, v in t.params.items() if k in spec_lib.DEFAULTS}
    return spec_lib.config_from_flat({**params, **json.loads(raw)})


def config_json(cfg: spec_lib.TrialConfig, params: dict[str, Any] | None = None) -> str:
    """A trial's resolved config as its user attribute keeps it: every value that differs from the
    default, less the searched ones its Optuna ``params`` already hold with the same value. The whole
    config (2.3 kB on one line) made each trial's page in optuna-dashboard 17,000 px wide; this is about
    100 characters (700 for a recipe with a long freeze list), and :func:`trial_config` rebuilds the
    config exactly."""
    given = spec_lib.plain(params or {})
    kept = {
        k: v
        for k, v in spec_lib.plain(cfg.flat()).items()
        if (given[k] != v if k in given else v != spec_lib.plain(spec_lib.DEFAULTS[k]))
    }
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


# ---- the data fingerprint -------------------------------------------------------------------------


def fingerprint(data: ImageFolderData) -> dict[str, Any]:
    """Class names, images per split and a digest of every file's path (relative to the root), label and
    size: equal for a copy of the same dataset elsewhere, different when a file is added, moved or edited."""
    h = hashlib.sha256()
    root = Path(data.root)
    for name, files, labels in (
        ("train", data.train.files, data.train.labels),
        ("val", data.val.files, data.val.labels),
        ("test", data.test, (-1,) * len(data.test)),
    ):
        for f, y in zip(files, labels, strict=True):
            rel = Path(f).relative_to(root).as_posix() if Path(f).is_relative_to(root) else str(f)
            h.update(f"{name}\0{rel}\0{y}\0{Path(f).stat().st_size}\n".encode())
    return {
        "classes": list(data.classes),
        "images": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "digest": h.hexdigest()[:16],
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    dists = {"sweeper": DISTRIBUTION, **{p: p for p in ("torch", "torchvision", "timm", "optuna", "mlflow")}}
    for pkg, dist in dists.items():  # keyed "sweeper" as before the rename, so old and new records compare
        try:
            out[pkg] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---- the study record -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRecord:
    """What defines a study: kept with it in storage when it is created."""

    document: dict[str, Any]  # the study as it ran, overrides applied (spec.to_document)
    study_file: str  # the study file's text
    path: str  # where the study file was
    overrides: dict[str, Any]  # --set, --epochs, --data as given
    data: dict[str, Any]  # {"root": ..., **fingerprint}
    versions: dict[str, str]
    bases: list[str] = field(default_factory=list)  # the base files the study file was merged over

    @classmethod
    def of(cls, spec: spec_lib.Study, data: ImageFolderData, overrides: dict[str, Any]) -> StudyRecord:
        text = spec.path.read_text(encoding="utf-8") if spec.path.is_file() else ""
        return cls(
            document=json.loads(json.dumps(spec_lib.to_document(spec))),
            study_file=text,
            path=str(spec.path),
            overrides=json.loads(json.dumps(spec_lib.plain(overrides))),
            data={"root": str(data.root), **fingerprint(data)},
            versions=versions(),
            bases=list(spec.bases),
        )

    def summary(self) -> dict[str, Any]:
        """The record as one JSON document (the study's MLflow run keeps it as ``study/study.json``)."""
        return {
            "study": self.document,
            "path": self.path,
            "overrides": self.overrides,
            "data": self.data,
            "versions": self.versions,
            "bases": self.bases,
            "study_file": self.study_file,
        }

    def spec(self) -> spec_lib.Study:
        """The study exactly as it ran, rebuilt from the record."""
        return spec_lib.parse(self.document, Path(self.path))


def save(study: optuna.Study, rec: StudyRecord) -> None:
    """Keep the record on the study. Its parts are separate writes, and :func:`load` sees a record once
    ``RECORD`` is there: it is written last, so a worker starting meanwhile never reads half of one."""
    doc = {"document": rec.document, "path": rec.path, "overrides": rec.overrides, "versions": rec.versions}
    doc["bases"] = rec.bases
    study.set_user_attr(DATA, rec.data)
    study.set_user_attr(STUDY_FILE, rec.study_file)
    study.set_user_attr(RECORD, doc)


def load(study: optuna.Study) -> StudyRecord | None:
    """The study's record; None for a study created before sweeper kept one."""
    attrs = study.user_attrs
    if RECORD not in attrs:
        return None
    r = attrs[RECORD]
    text, data = attrs.get(STUDY_FILE, ""), attrs.get(DATA, {})
    return StudyRecord(
        r["document"], text, r["path"], r["overrides"], data, r["versions"], r.get("bases", [])
    )


def differences(recorded: StudyRecord, now: StudyRecord) -> list[str]:
    """What ``now`` changes in the meaning of the recorded study's trials, as ``key (was -> now)``."""
    out: list[str] = []
    for section in MEANING:
        a, b = recorded.document.get(section), now.document.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{section}.{k} ({_short(a.get(k))} -> {_short(b.get(k))})")
        elif a != b:
            out.append(f"{section} ({_short(a)} -> {_short(b)})")
    for key in ("classes", "images", "digest"):
        if recorded.data.get(key) != now.data.get(key):
            out.append(f"data.{key} ({_short(recorded.data.get(key))} -> {_short(now.data.get(key))})")
    return out


def _short(v: object) -> str:
    if v is None:
        return "unset"
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def ensure(study: optuna.Study, now: StudyRecord) -> StudyRecord | None:
    """Keep ``now`` as the record of a new study, or check it against the record of an existing one.

    Returns the recorded record (None for a study from before records existed, which runs on unchecked).

    Raises:
        SweeperError: this run would change what the study's trials mean.
    """
    recorded = load(study)
    if recorded is None:
        if study.get_trials(deepcopy=False):
            return None  # an older study: nothing to compare with; refit warns
        save(study, now)
        return now
    changed = differences(recorded, now)
    if changed:
        raise SweeperError(
            f"study {study.study_name!r} already ran with another definition; this run changes "
            f"{'; '.join(changed)}. A study is one experiment: to try this, start a new study with "
            f"--name NEW_NAME (or another `name:` in the study file); to resume, use the study file, "
            "--set, --epochs and --data it ran with (`sweeper show` prints them)"
        )
    return recorded


# ---- a stored study, as refit, show and report read it ----------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A stored study with the definition it ran with: from its record, else (older studies) its file."""

    study: optuna.Study
    spec: spec_lib.Study
    record: StudyRecord | None

    @property
    def notes(self) -> list[str]:
        if self.record is not None:
            return []
        return [
            f"study {self.spec.name!r} was created before sweeper kept a study record: its definition is "
            f"read from {self.spec.path} as the file is now, which may differ from what ran"
        ]


def open_recorded(name_or_path: str, storage_url: str | None) -> Recorded:
    """The stored study named by a study file, a file stem or a stored study name.

    Raises:
        SweeperError: no such study in storage, or an older study without a record and no study file.
    """
    from sweeper.store import stores

    try:
        path: Path | None = spec_lib.find(name_or_path)
    except SweeperError:
        if Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path:
            raise
        path = None  # not a study file: a name in storage (e.g. one run with --name)
    file_spec, file_error, name = None, None, name_or_path
    if path is not None:
        try:
            file_spec = spec_lib.load(str(path))
            name = file_spec.name
        except SweeperError as e:  # the file is broken now; its study's record may still be whole
            file_error, name = e, path.stem
    study = stores.load_existing(name, storage_url)
    rec = load(study)
    if rec is not None:
        return Recorded(study, rec.spec(), rec)
    if file_spec is None:
        raise file_error or SweeperError(
            f"study {name!r} has no record in storage (created by an older sweeper) and no study file "
            "of that name; pass the study file it ran with"
        )
    return Recorded(study, file_spec, None)


def check_classes(rec: StudyRecord | None, classes: tuple[str, ...], root: Path) -> None:
    """Refuse data whose classes differ from those the study ran on: predictions would be mislabelled."""
    if rec is None or "classes" not in rec.data or list(classes) == rec.data["classes"]:
        return
    was = rec.data["classes"]
    missing, extra = sorted(set(was) - set(classes)), sorted(set(classes) - set(was))
    detail = f"missing {missing[:5]}; new {extra[:5]}" if missing or extra else "the same names, reordered"
    raise SweeperError(
        f"the data at {root} has other classes than the study ran on ({len(classes)} vs {len(was)}: "
        f"{detail}); "
        f"pass the --data it ran on ({rec.data.get('root')}), or drop --data to use it"
    )
