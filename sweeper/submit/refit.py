"""Refit the best trial on train+val and write the submission: model, config and prediction.csv.

The refit trains the winning trial's own recorded config (never the study file as it is now), with the
trial's LR schedule, and stops at the epoch where that trial peaked. Trials from before configs were
recorded replay their params through ``space.suggest`` with Optuna's FixedTrial.

Instead of retraining, a submission can also combine the weights trials kept (fetched from MLflow): the
best k-fold trial's fold models or the top trials' models as a probability-averaging ensemble, or a
greedy weight soup of the top trials that share one architecture.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from sweeper.data.images import ImageFolderData
from sweeper.errors import SweeperError
from sweeper.store import record
from sweeper.store.tracking import RunLog, Tracker
from sweeper.study import objectives
from sweeper.study import space as space_lib
from sweeper.study import spec as spec_lib
from sweeper.study.config import TrialConfig
from sweeper.study.spec import Study
from sweeper.submit import predictor
from sweeper.train import artifacts, averaging, evaluation, fit
from sweeper.train.fit import TrialResult


@dataclass(frozen=True)
class RefitPlan:
    """What a refit trains: the trial's own config (``--set`` on top), and the epoch it stops after."""

    trial: optuna.trial.FrozenTrial
    cfg: TrialConfig
    stop_epoch: int  # the trial's best epoch; the LR schedule still spans cfg.epochs, as in the trial
    overrides: dict[str, Any]  # --set, applied on purpose
    notes: list[str]  # what the user should know (an older study without a record)
    why: str = "the best trial"  # why this trial: the best, or the winner of `sweeper confirm`

    def trial_value(self, key: str) -> Any:
        """What the trial itself ran with for ``key`` (before ``--set``)."""
        recorded = record.trial_config(self.trial)
        return None if recorded is None else recorded.flat().get(key)


def plan(src: record.Recorded, sets: dict[str, Any] | None = None, pick: str | None = None) -> RefitPlan:
    """Replay the best trial (the confirmed winner once `sweeper confirm` ran, the trial a ``--pick`` rule
    chooses when given): its recorded config, else (older trials) its params through the space."""
    best, why = chosen(src, pick)
    notes = list(src.notes)
    cfg = record.trial_config(best)
    if cfg is None:
        cfg = _replayed(src.spec, best)
        notes.append(f"trial {best.number} has no recorded config: replayed its params through the study")
    overrides = {}
    for key, value in (sets or {}).items():
        spec_lib.known_key(key, f"--set {key}")
        try:
            overrides[key] = spec_lib.coerce(key, value)
        except ValueError as e:
            raise SweeperError(f"--set {key}={value!r}: {e}") from None
    if overrides:
        cfg = spec_lib.config_from_flat({**cfg.flat(), **overrides})
    stop = int(best.user_attrs.get(record.BEST_EPOCH, cfg.epochs))
    return RefitPlan(best, cfg, max(1, min(stop, cfg.epochs)), overrides, notes, why)


def chosen(src: record.Recorded, pick: str | None = None) -> tuple[optuna.trial.FrozenTrial, str]:
    """The trial to refit (or export) and why: the one a ``--pick`` rule chooses, else the confirmed winner
    when a confirmation ran, else the best trial (a multi-objective study needs a rule)."""
    from sweeper.results import confirm

    if pick is not None:
        return _picked(src, pick)
    if src.spec.multi:
        return record.best_trial(src.study), ""  # raises: a Pareto front has no one best trial
    conf = confirm.confirmation(src.study, src.spec.direction)
    said = confirm.headline(conf, src.spec.metric)
    if said is None:  # no confirmation queued
        return record.best_trial(src.study), f"the best trial of {src.spec.name!r}"
    if conf.winner is None or conf.winner.refit_trial is None:
        best = confirm.sweep_best(src.study, src.spec.direction) or record.best_trial(src.study)
        return best, f"the best trial of {src.spec.name!r}, not a confirmed winner: {said}"
    trial = next(t for t in src.study.get_trials(deepcopy=False) if t.number == conf.winner.refit_trial)
    return trial, f"the confirmed winner of {src.spec.name!r}: {said.removeprefix('confirmed winner: ')}"


def _picked(src: record.Recorded, text: str) -> tuple[optuna.trial.FrozenTrial, str]:
    """The trial a rule picks: from the Pareto front of a multi-objective study when the rule names its
    objectives only, else from every complete trial of the study's own (a rule on another cost, such as
    ``min:num_params`` in an accuracy-latency study, may prefer a trial off that front; and
    ``val_acc>=0.9,min:num_params`` works on any study)."""
    names = [m for m, _ in src.spec.objectives]
    everything = record.own_complete(src.study)
    if not everything:
        raise SweeperError(f"study {src.spec.name!r} has no complete trial yet; run more trials")
    known = list(dict.fromkeys([*names, *(k for t in everything for k in objectives.values(t, names))]))
    rule = objectives.parse_rule(text, known)
    named = {k for k, _, _ in rule.filters} | {k for k, _ in rule.orders}
    if src.spec.multi and named <= set(names):
        candidates, where = record.pareto_front(src.study, src.spec.objectives), "the Pareto front"
    else:
        candidates, where = everything, "the complete trials"
    trial, why = objectives.pick(candidates, rule, src.spec.objectives)
    if trial is None:
        raise SweeperError(f"{why}; loosen the rule (`sweeper show {src.spec.name}` lists {where})")
    return trial, f"{why.replace('candidates', f'trials of {where}', 1)}"


def _replayed(spec: Study, best: optuna.trial.FrozenTrial) -> TrialConfig:
    missing = [k for k, d in spec.space.items() if k not in best.params and d.active(best.params)]
    if missing:
        raise SweeperError(
            f"the best trial of {spec.name!r} has no value for {', '.join(missing)}; the study file's space "
            "changed since it ran: pin them with --set or refit with the original study file"
        )
    return spec.resolve(space_lib.suggest(optuna.trial.FixedTrial(best.params), spec.space))


def refit_best(
    p: RefitPlan,
    data: ImageFolderData,
    out: Path,
    tracker: Tracker,
    study_name: str,
    register: str | None = None,
) -> dict[str, Any]:
    """Train the plan on train+val, log it to MLflow and write ``out/``. Returns a summary.

    The refit run's params are the trial's config as it trained (plus any ``--set``); what refit changes
    on purpose is tagged: the data (train+val) and the epoch it stops after.
    """
    out.mkdir(parents=True, exist_ok=True)
    tracker.close_dead_runs()  # a refit killed before: its run is closed now, not left RUNNING
    run = tracker.start(
        run_name=f"refit-trial-{p.trial.number:04d}",
        params=p.cfg.flat(),
        tags={
            "study": study_name,
            "refit_of_trial": p.trial.number,
            "sweeper.kind": "refit",
            "state": "RUNNING",
            "sweeper.refit.data": "train+val",
            "sweeper.refit.stop_epoch": p.stop_epoch,
            "sweeper.refit.chosen": p.why[:5000],
            "sweeper.refit.overrides": json.dumps(spec_lib.plain(p.overrides)) if p.overrides else "none",
        },
    )
    try:
        result = fit.run_trial(
            p.cfg, data, lambda e, m: run.log_metrics(e, m), train_on_val=True, stop_epoch=p.stop_epoch
        )
        wrote = _write_refit(p, data, out, result)
        model_uri = _log_submission(tracker, run, out, wrote, register)
    except BaseException as e:
        run.end("FAIL", f"{type(e).__name__}: {e}"[:500])
        raise
    run.end("COMPLETE")
    return {
        "trial": p.trial.number,
        "value": record.primary(p.trial),
        "epochs": p.stop_epoch,
        "out": out,
        "files": wrote,
        "run_id": run.run_id,
        "model_uri": model_uri,
    }


def _log_submission(tracker: Tracker, run: RunLog, out: Path, wrote: list[str], register: str | None) -> str:
    """The folder as an MLflow model of the run (registered when asked); its small files as run artifacts
    too, to read in the UI. Returns the model's URI."""
    for name in wrote:
        if (out / name).is_file() and name != "model.safetensors":  # the weights live in the model
            run.log_file(out / name, "submission")
    with predictor.bundle() as loader:
        uri = tracker.log_model(run.run_id, out, loader, register)
    run.set_tags({"sweeper.model_uri": uri, **({"sweeper.registered_as": register} if register else {})})
    return uri


def _write_refit(p: RefitPlan, data: ImageFolderData, out: Path, result: TrialResult) -> list[str]:
    extra = {
        "refit_of_trial": p.trial.number,
        "best_trial_value": record.primary(p.trial),
        "chosen": p.why,
        "stop_epoch": p.stop_epoch,
        "overrides": spec_lib.plain(p.overrides),
    }
    artifacts.write_config(out / "config.yaml", p.cfg, data.classes, result.data_config, extra)
    artifacts.save_weights(out / "model.safetensors", result.state_dict, {"backbone": p.cfg.backbone})
    wrote = ["model.safetensors", "config.yaml"]
    if data.test:
        model = evaluation.load_for_inference(p.cfg, len(data.classes), result.state_dict)
        probs = evaluation.predict_files(model, data.test, p.cfg, result.data_config)
        artifacts.write_predictions(out / "prediction.csv", data.test, probs, data.classes)
        wrote.append("prediction.csv")
    return wrote


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


def fetch_members(
    trial: optuna.trial.FrozenTrial, tracker: Tracker, dst: Path, classes: tuple[str, ...]
) -> list[Member]:
    """Download a trial's kept weights from MLflow: ``best.safetensors``, or every fold's for k-fold."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise SweeperError(f"trial {trial.number} has no MLflow run; it ran without tracking")
    run = tracker.run(run_id)
    gone = run.data.tags.get("sweeper.weights", "") if run is not None else ""
    if gone.startswith("deleted"):
        raise SweeperError(
            f"trial {trial.number}'s weights were {gone}: --combine uses the kept ones; lower --top to at "
            "most the study's keep_weights (or raise keep_weights before the sweep)"
        )
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
        model = evaluation.load_for_inference(m.cfg, num_classes, m.state_dict())
        total += evaluation.predict_files(model, files, m.cfg, m.data_config)
    return total / len(members)


def accuracy(probs: torch.Tensor, labels: tuple[int, ...]) -> float:
    return float((probs.argmax(1) == torch.tensor(labels)).float().mean())


def combine(
    src: record.Recorded,
    data: ImageFolderData,
    out: Path,
    tracker: Tracker,
    how: str,
    top: int = 3,
    register: str | None = None,
    allow_over_budget: bool = False,
) -> dict[str, Any]:
    """Write a submission from trials' kept weights, no retraining.

    ``folds``: the best trial's k-fold models, probabilities averaged. ``top``: the ``top`` best trials'
    models (each fold of a k-fold trial counts), probabilities averaged. ``soup``: a greedy soup of the
    ``top`` best trials that share the best one's architecture, a single model.
    """
    spec = src.spec
    trials = record.top_trials(src.study, 1 if how == "folds" else top, spec.direction)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracker.close_dead_runs()
    run = tracker.start(
        run_name=f"{how}-trial-{trials[0].number:04d}",
        params={"combine": how, "top": top},
        tags={
            "study": spec.name,
            "combine": how,
            "sweeper.kind": "combine",
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
        if how != "soup":  # a soup is one model; an ensemble is all of its members
            _check_budget(spec, members, len(data.classes), allow_over_budget)
        summary: dict[str, Any] = {"how": how, "trials": [t.number for t in trials], "out": out}
        write = _write_soup if how == "soup" else _write_ensemble
        members, wrote, val_acc = write(members, data, out)
        summary.update(files=wrote, members=len(members))
        if val_acc is not None:
            summary["val_acc"] = val_acc
            run.log_metrics(0, {f"{how}_val_acc": val_acc})
        summary["model_uri"] = _log_submission(tracker, run, out, wrote, register)
    except BaseException as e:
        run.end("FAIL", f"{type(e).__name__}: {e}"[:500])
        raise
    run.end("COMPLETE")
    summary["run_id"] = run.run_id
    return summary


def _check_budget(spec: Study, members: list[Member], num_classes: int, allow: bool) -> None:
    """An ensemble is a submission model too: its members' parameters together meet the study's budget."""
    from sweeper.train import model as model_lib

    if spec.max_params is None:
        return
    total = sum(model_lib.count_params_for(m.cfg, num_classes) for m in members)
    if total > spec.max_params and not allow:
        raise SweeperError(
            f"the ensemble of {len(members)} models has {total / 1e6:.1f}M parameters, over the study's "
            f"budget of {spec.max_params / 1e6:.1f}M (constraints.max_params); lower --top, use --combine "
            "soup or refit, or pass --allow-over-budget"
        )


def _write_soup(
    members: list[Member], data: ImageFolderData, out: Path
) -> tuple[list[Member], list[str], float | None]:
    """A greedy soup as one model: its weights, config and predictions."""
    members, state, val_acc = soup(members, data)
    artifacts.save_weights(out / "model.safetensors", state, {"backbone": members[0].cfg.backbone})
    extra = {"soup_of_trials": [m.trial for m in members], "soup_val_acc": val_acc}
    artifacts.write_config(out / "config.yaml", members[0].cfg, data.classes, members[0].data_config, extra)
    wrote = ["model.safetensors", "config.yaml"]
    if data.test:
        souped = dataclasses.replace(members[0], weights=out / "model.safetensors")
        probs = ensemble_probs([souped], data.test, len(data.classes))
        artifacts.write_predictions(out / "prediction.csv", data.test, probs, data.classes)
        wrote.append("prediction.csv")
    return members, wrote, val_acc


def _write_ensemble(
    members: list[Member], data: ImageFolderData, out: Path
) -> tuple[list[Member], list[str], float | None]:
    """A probability-averaging ensemble: its members' weights, a config listing them, and predictions.
    Its validation accuracy only when no member trained on the validation split (fold models did)."""
    num_classes = len(data.classes)
    val_acc = None
    if not any(m.name.startswith("fold-") for m in members):
        val_acc = accuracy(ensemble_probs(members, data.val.files, num_classes), data.val.labels)
    listed = [
        {
            "trial": m.trial,
            "weights": str(m.weights.relative_to(out)),
            "trial_config": m.cfg.flat(),
            "data_config": m.data_config,
        }
        for m in members
    ]
    doc = {"ensemble": listed, "classes": list(data.classes), "val_acc": val_acc}
    (out / "config.yaml").write_text(yaml.safe_dump(artifacts.to_plain(doc), sort_keys=False))
    wrote = ["config.yaml", "members"]
    if data.test:
        probs = ensemble_probs(members, data.test, num_classes)
        artifacts.write_predictions(out / "prediction.csv", data.test, probs, data.classes)
        wrote.append("prediction.csv")
    return members, wrote, val_acc


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
    model = evaluation.load_for_inference(best.cfg, num_classes, ref)

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        probs = evaluation.predict_files(model, data.val.files, best.cfg, best.data_config)
        return accuracy(probs, data.val.labels)

    kept, state, val_acc = averaging.greedy_soup(states, score)
    return [candidates[i] for i in kept], state, val_acc
