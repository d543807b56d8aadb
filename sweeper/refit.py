"""Refit the best trial on train+val and write the submission: model, config and prediction.csv.

The best trial's params are replayed through ``space.suggest`` with Optuna's FixedTrial, so the refit
config is exactly what was searched; it trains for the epoch count at which that trial peaked.

Instead of retraining, a submission can also combine the weights trials kept (fetched from MLflow): the
best k-fold trial's fold models or the top trials' models as a probability-averaging ensemble, or a
greedy weight soup of the top trials that share one architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from sweeper import artifacts, averaging, train
from sweeper import space as space_lib
from sweeper import study as study_lib
from sweeper.data import ImageFolderData
from sweeper.errors import SweeperError
from sweeper.spec import Study, TrialConfig


def best_config(spec: Study, best: optuna.trial.FrozenTrial) -> TrialConfig:
    """Replay the best trial's params through the study's space; refit for its best epoch count."""
    missing = [k for k in spec.space if k not in best.params]
    if missing:
        raise SweeperError(
            f"the best trial of {spec.name!r} has no value for {', '.join(missing)}; the study file's space "
            "changed since it ran: pin them with --set or refit with the original study file"
        )
    params = space_lib.suggest(optuna.trial.FixedTrial(best.params), spec.space)
    cfg = spec.resolve(params)
    epochs = int(best.user_attrs.get(study_lib.BEST_EPOCH, cfg.epochs))
    return dataclasses.replace(cfg, epochs=max(1, epochs))


def refit_best(
    spec: Study, data: ImageFolderData, out: Path, storage_url: str | None, tracker: Any
) -> dict[str, Any]:
    """Train the best config on train+val, log it to MLflow and write ``out/``. Returns a summary."""
    study = study_lib.load_existing(spec.name, storage_url)
    best = study_lib.best_trial(study)
    cfg = best_config(spec, best)
    out.mkdir(parents=True, exist_ok=True)
    run = tracker.start(
        run_name=f"refit-trial-{best.number:04d}",
        params=cfg.flat(),
        tags={"study": spec.name, "refit_of_trial": best.number, "state": "RUNNING"},
    )
    try:
        result = train.run_trial(cfg, data, lambda e, m: run.log_metrics(e, m), train_on_val=True)
        artifacts.write_config(
            out / "config.yaml",
            cfg,
            data.classes,
            result.data_config,
            {"refit_of_trial": best.number, "best_trial_value": best.value},
        )
        artifacts.save_weights(out / "model.safetensors", result.state_dict, {"backbone": cfg.backbone})
        wrote = ["model.safetensors", "config.yaml"]
        if data.test:
            model = train.load_for_inference(cfg, len(data.classes), result.state_dict)
            probs = train.predict_files(model, data.test, cfg, result.data_config)
            artifacts.write_predictions(out / "prediction.csv", data.test, probs, data.classes)
            wrote.append("prediction.csv")
        for name in wrote:
            run.log_file(out / name, "model")
    except BaseException as e:
        run.end("FAIL", f"{type(e).__name__}: {e}"[:500])
        raise
    run.end("COMPLETE")
    return {
        "trial": best.number,
        "value": best.value,
        "epochs": cfg.epochs,
        "out": out,
        "files": wrote,
        "run_id": run.run_id,
    }


# ---- ensembles and soups: the kept weights of trials, combined without retraining ---------------------


@dataclass
class Member:
    """One trained model of a finished trial: its config, data config and weights."""

    trial: int
    name: str  # best / fold-k
    cfg: TrialConfig
    data_config: dict[str, Any]
    weights: Path

    def state_dict(self) -> dict[str, torch.Tensor]:
        return artifacts.load_weights(self.weights)


def top_trials(spec: Study, study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best complete trials that satisfy the study's constraints, best first."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
        if all(c <= 0 for c in t.constraints.values()) and t.value is not None
    ]
    done.sort(key=lambda t: float(t.value), reverse=spec.direction == "maximize")  # type: ignore[arg-type]
    if not done:
        raise SweeperError(f"study {spec.name!r} has no complete trial yet; run more trials")
    return done[:k]


def fetch_members(
    trial: optuna.trial.FrozenTrial, tracker: Any, dst: Path, classes: tuple[str, ...]
) -> list[Member]:
    """Download a trial's kept weights from MLflow: ``best.safetensors``, or every fold's for k-fold."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise SweeperError(f"trial {trial.number} has no MLflow run; it ran without tracking")
    where = dst / f"trial-{trial.number:04d}"
    cfg_path = tracker.download(run_id, "config.yaml", where)
    cfg, trial_classes, dcfg = artifacts.read_config(cfg_path)
    if trial_classes != classes:
        raise SweeperError(
            f"trial {trial.number} was trained on classes {list(trial_classes)[:5]}..., "
            f"not this dataset's {list(classes)[:5]}...; pass the --data it ran on"
        )
    files = yaml.safe_load(cfg_path.read_text()).get("fold_files") or ["best.safetensors"]
    return [Member(trial.number, Path(f).stem, cfg, dcfg, tracker.download(run_id, f, where)) for f in files]


def ensemble_probs(members: list[Member], files: tuple[Path, ...], num_classes: int) -> torch.Tensor:
    """The mean of the members' class probabilities; each member sees images through its own eval config."""
    total = torch.zeros(len(files), num_classes)
    for m in members:
        model = train.load_for_inference(m.cfg, num_classes, m.state_dict())
        total += train.predict_files(model, files, m.cfg, m.data_config)
    return total / len(members)


def accuracy(probs: torch.Tensor, labels: tuple[int, ...]) -> float:
    return float((probs.argmax(1) == torch.tensor(labels)).float().mean())


def combine(
    spec: Study,
    data: ImageFolderData,
    out: Path,
    storage_url: str | None,
    tracker: Any,
    how: str,
    top: int = 3,
) -> dict[str, Any]:
    """Write a submission from trials' kept weights, no retraining.

    ``folds``: the best trial's k-fold models, probabilities averaged. ``top``: the ``top`` best trials'
    models (each fold of a k-fold trial counts), probabilities averaged. ``soup``: a greedy soup of the
    ``top`` best trials that share the best one's architecture, a single model.
    """
    study = study_lib.load_existing(spec.name, storage_url)
    trials = top_trials(spec, study, 1 if how == "folds" else top)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    num_classes = len(data.classes)
    run = tracker.start(
        run_name=f"{how}-trial-{trials[0].number:04d}",
        params={"combine": how, "top": top},
        tags={
            "study": spec.name,
            "combine": how,
            "state": "RUNNING",
            "members": ",".join(str(t.number) for t in trials),
        },
    )
    try:
        members = [m for t in trials for m in fetch_members(t, tracker, out / "members", data.classes)]
        if how == "folds" and len(members) < 2:
            raise SweeperError(
                f"best trial {trials[0].number} is not a k-fold trial (folds=1); "
                "set folds >= 2 in the study, or use --combine refit/top/soup"
            )
        summary: dict[str, Any] = {"how": how, "trials": [t.number for t in trials], "out": out}
        if how == "soup":
            members, state, val_acc = soup(members, data)
            artifacts.save_weights(out / "model.safetensors", state, {"backbone": members[0].cfg.backbone})
            wrote = ["model.safetensors", "config.yaml"]
            extra = {"soup_of_trials": [m.trial for m in members], "soup_val_acc": val_acc}
            artifacts.write_config(
                out / "config.yaml", members[0].cfg, data.classes, members[0].data_config, extra
            )
            summary["val_acc"] = val_acc
            probs = (
                ensemble_probs(
                    [dataclasses.replace(members[0], weights=out / "model.safetensors")],
                    data.test,
                    num_classes,
                )
                if data.test
                else None
            )
        else:
            in_val = any(m.name.startswith("fold-") for m in members)  # fold models have trained on val
            if not in_val:
                val_probs = ensemble_probs(members, data.val.files, num_classes)
                summary["val_acc"] = accuracy(val_probs, data.val.labels)
            listed = [
                {
                    "trial": m.trial,
                    "weights": str(m.weights.relative_to(out)),
                    "trial_config": m.cfg.flat(),
                    "data_config": m.data_config,
                }
                for m in members
            ]
            doc = {"ensemble": listed, "classes": list(data.classes), "val_acc": summary.get("val_acc")}
            (out / "config.yaml").write_text(yaml.safe_dump(artifacts._plain(doc), sort_keys=False))
            wrote = ["config.yaml", "members"]
            probs = ensemble_probs(members, data.test, num_classes) if data.test else None
        if probs is not None:
            artifacts.write_predictions(out / "prediction.csv", data.test, probs, data.classes)
            wrote.append("prediction.csv")
        summary.update(files=wrote, members=len(members))
        if "val_acc" in summary:
            run.log_metrics(0, {f"{how}_val_acc": summary["val_acc"]})
        for name in wrote:
            if (out / name).is_dir():
                run.log_dir(out / name, f"model/{name}")
            else:
                run.log_file(out / name, "model")
    except BaseException as e:
        run.end("FAIL", f"{type(e).__name__}: {e}"[:500])
        raise
    run.end("COMPLETE")
    summary["run_id"] = run.run_id
    return summary


def soup(members: list[Member], data: ImageFolderData) -> tuple[list[Member], dict[str, torch.Tensor], float]:
    """Greedy soup on the validation split of the candidates that share the best one's architecture."""
    best = members[0]
    if best.name != "best":
        raise SweeperError(
            f"trial {best.trial} is a k-fold trial: its fold models saw the validation split, "
            "so a soup cannot be chosen on it; use --combine folds"
        )
    ref = best.state_dict()
    candidates, states = [best], [ref]
    for m in members[1:]:
        s = m.state_dict()
        if (
            m.name == "best"
            and m.cfg.backbone == best.cfg.backbone
            and m.cfg.head == best.cfg.head
            and list(s) == list(ref)
            and all(s[k].shape == ref[k].shape for k in ref)
        ):
            candidates.append(m)
            states.append(s)
    num_classes = len(data.classes)
    model = train.load_for_inference(best.cfg, num_classes, ref)

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        probs = train.predict_files(model, data.val.files, best.cfg, best.data_config)
        return accuracy(probs, data.val.labels)

    kept, state, val_acc = averaging.greedy_soup(states, score)
    return [candidates[i] for i in kept], state, val_acc
