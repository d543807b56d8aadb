"""export-best: the pinned study it writes is one that `sweeper check` accepts, for every kind of study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from sweeper.results import views
from sweeper.store import record as rec
from sweeper.study import spec as spec_lib
from sweeper.sweep import loop


@pytest.mark.parametrize("name", ["ablation-aug", "quickstart-tradeoff", "quickstart", "recipe-004"])
def test_export_best_writes_a_study_that_check_accepts(name: str, tmp_path: Path) -> None:
    spec = spec_lib.load(name)
    params = {
        k: d.choices[0] if d.kind in ("choice",) else (d.low if d.low is not None else True)
        for k, d in spec.space.items()
        if not d.when
    }
    cfg = spec.resolve(params)
    trial = optuna.trial.create_trial(
        value=0.5, params={}, distributions={}, user_attrs={rec.CONFIG: rec.config_json(cfg)}
    )
    doc = views.best_document(rec.Recorded(optuna.create_study(), spec, None), trial)
    path = tmp_path / "pinned.yaml"  # as export-best writes it, read back as `sweeper check` reads it
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    pinned = spec_lib.load(str(path))
    loop.build_sampler(pinned)
    loop.build_pruner(pinned)
    assert pinned.space == {} and pinned.design is None and not pinned.multi
    assert pinned.resolve({}).flat() == {**cfg.flat(), "epochs": cfg.epochs}
