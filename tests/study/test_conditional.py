"""Conditional dimensions (``when:``): sampled only where their condition holds, else the default."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from sweeper.errors import SweeperError
from sweeper.study import space as space_lib
from sweeper.study import spec as spec_lib
from tests.helpers.builders import load_study

STUDY = """
name: cond
data: {{root: builtin:digits}}
sampler: {{name: {sampler}, seed: 0}}
fixed: {{freeze_depth: 0}}
space:
  optimizer: {{choice: [sgd, adamw, adam]}}
  momentum: {{float: [0.8, 0.99], when: {{optimizer: sgd}}}}
  nesterov: {{bool: true, when: {{optimizer: sgd}}}}
  weight_decay: {{float: [1.0e-5, 1.0e-2], log: true, when: {{optimizer: {{in: [adamw, adam]}}}}}}
  layer_decay: {{choice: [0.9, 0.75], when: {{freeze_depth: 0}}}}
"""


def load(tmp_path: Path, text: str = STUDY, sampler: str = "tpe") -> spec_lib.Study:
    return load_study(tmp_path, text.format(sampler=sampler), "cond")


def test_a_conditional_dimension_is_never_sampled_when_its_condition_is_false(tmp_path: Path) -> None:
    spec = load(tmp_path)
    assert spec.space["layer_decay"].when == ()  # freeze_depth is fixed to 0: always sampled
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    seen = []
    for _ in range(30):
        t = study.ask()
        params = space_lib.suggest(t, spec.space)
        study.tell(t, params.get("momentum", 0.5))
        seen.append(params)
    for p in seen:
        assert ("momentum" in p) == ("nesterov" in p) == (p["optimizer"] == "sgd")
        assert ("weight_decay" in p) == (p["optimizer"] != "sgd")
        assert "layer_decay" in p
        cfg = spec.resolve(p)
        if p["optimizer"] != "sgd":  # absent: the TrialConfig default
            assert cfg.momentum == spec_lib.DEFAULTS["momentum"] and space_lib.absent(spec.space, p)
    assert {p["optimizer"] for p in seen} == {"sgd", "adamw", "adam"}


def test_conditions_round_trip_and_are_described(tmp_path: Path) -> None:
    spec = load(tmp_path)
    doc = json.loads(json.dumps(spec_lib.to_document(spec)))
    assert spec_lib.parse(doc, spec.path) == spec
    assert space_lib.describe(spec.space["weight_decay"]).endswith("only when optimizer in {adamw, adam}")


def test_a_pinned_condition_keeps_or_drops_the_dimension(tmp_path: Path) -> None:
    spec = load(tmp_path)
    sgd = spec.with_overrides({"optimizer": "sgd"})
    assert sgd.space["momentum"].when == () and "weight_decay" not in sgd.space
    adam = spec.with_overrides({"optimizer": "adam"})
    assert "momentum" not in adam.space and adam.space["weight_decay"].when == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("fixed: {{freeze_depth: 0}}", "fixed: {{freeze_depth: 2}}"),
            r"space.layer_decay: when: freeze_depth is 2 here .* never",
        ),
        (("{optimizer: sgd}}}}\n  nesterov", "{optimiser: sgd}}}}\n  nesterov"), r"did you mean 'optimizer'"),
        (
            ("when: {{optimizer: sgd}}}}\n  nesterov", "when: {{optimizer: sgdd}}}}\n  nesterov"),
            r"when.optimizer",
        ),
    ],
)
def test_impossible_or_misspelt_conditions_are_errors(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(SweeperError, match=message):
        load(tmp_path, STUDY.replace(*change))


def test_a_condition_on_a_later_dimension_and_a_grid_are_refused(tmp_path: Path) -> None:
    later = STUDY.replace("  optimizer: {{choice: [sgd, adamw, adam]}}\n", "") + (
        "  optimizer: {{choice: [sgd, adamw, adam]}}\n"
    )
    with pytest.raises(SweeperError, match="optimizer must come before momentum"):
        load(tmp_path, later)
    with pytest.raises(SweeperError, match="conditional dimensions need another sampler"):
        load(tmp_path, sampler="grid")
