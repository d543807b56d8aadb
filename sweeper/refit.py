"""Refit the best trial on train+val and write the submission: model, config and prediction.csv.

The best trial's params are replayed through ``space.suggest`` with Optuna's FixedTrial, so the refit
config is exactly what was searched; it trains for the epoch count at which that trial peaked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna

from sweeper import artifacts, train
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
