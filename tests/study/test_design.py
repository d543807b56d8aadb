from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from sweeper.errors import SweeperError
from sweeper.store import record
from sweeper.study import design, spec
from sweeper.study import space as space_lib
from sweeper.sweep import loop as sweep
from tests.helpers.simulated import Truth

TOGGLES = ["aug.rrc", "aug.hflip", "aug.vflip", "aug.rotation", "aug.translate"]


def doc(toggles: list[str] = TOGGLES, **design_args: Any) -> dict[str, Any]:
    return {
        "name": "d",
        "data": {"root": "builtin:digits"},
        "epochs": 3,
        "sampler": {"name": "random", "seed": 0},
        "fixed": {"seed": 10},
        "space": {**{k: {"bool": True} for k in toggles}, "lr_head": {"float": [1e-3, 1e-2], "log": True}},
        "design": {"kind": "fractional", "repeats": 2, **design_args},
    }


def parse(raw: dict[str, Any]) -> spec.Study:
    return spec.parse(raw, Path("d.yaml"))


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(SweeperError) as e:
        parse(raw)
    assert "\n" not in str(e.value)
    return str(e.value)


def resolution_iv(x: np.ndarray) -> bool:
    """No main effect aliased with another main effect or with a two-way interaction."""
    k = x.shape[1]
    for i in range(k):
        others = [j for j in range(k) if j != i]
        if any((x[:, i] * x[:, j]).sum() for j in others):
            return False
        if any((x[:, i] * x[:, a] * x[:, b]).sum() for a, b in itertools.combinations(others, 2)):
            return False
    return True


@pytest.mark.parametrize("k", range(1, 17))
def test_fractional_designs_are_balanced_and_of_resolution_iv(k: int) -> None:
    x = design.fractional(k)
    assert len(x) == {1: 2, 2: 4, 3: 8, 4: 8}.get(k, 16 if k <= 8 else 32)
    assert (x.sum(0) == 0).all() and resolution_iv(x) and len({tuple(r) for r in x}) == len(x)


def test_balanced_designs_are_orthogonal_arrays_when_one_is_known() -> None:
    for n in (12, 20, 24):
        x = design.balanced([[False, True]] * (n - 1), n, 0)
        assert (x.T @ x == n * np.eye(n - 1)).all()  # Plackett-Burman: every column balanced, orthogonal
    mixed = design.balanced([[0, 1, 2], [False, True]], None, 0)
    assert len(mixed) == 12 and Counter(mixed[:, 0].tolist()) == {0: 4, 1: 4, 2: 4}


def test_a_design_study_parses_round_trips_and_adds_the_paired_seeds() -> None:
    s = parse(doc())
    assert s.design is not None and s.design.dims == tuple(TOGGLES) and s.pruner == {"name": "none"}
    assert s.design.seeds() == [10, 11] and "seed" in s.space  # fixed seed + repeat
    assert spec.parse(spec.to_document(s), Path("d.yaml")) == s
    runs = design.runs(s.design, s.space)
    assert len(runs) == 32 and len({tuple(sorted(p.items())) for _, p in runs}) == 32
    first, second = [p for _, p in runs[:16]], [p for _, p in runs[16:]]
    assert {p["seed"] for p in first} == {10} and {p["seed"] for p in second} == {11}
    strip = [{k: v for k, v in p.items() if k != "seed"} for p in first]
    assert strip == [{k: v for k, v in p.items() if k != "seed"} for p in second]  # same arms per repeat


def test_design_errors_name_the_key() -> None:
    assert "design.kind: must be one of" in error_of(doc(kind="latin"))
    assert "design.repeat: unknown key (did you mean 'repeats'?)" in error_of(doc(repeat=2))
    assert "design.runs: applies to kinds balanced and foldover only" in error_of(doc(runs=12))
    unnamed = doc(runs=12)
    del unnamed["design"]["kind"]
    assert "design.runs: name the kind it sizes: foldover (resolution IV) or balanced" in error_of(unnamed)
    assert "design.runs: a foldover of 5 toggles runs twice an orthogonal array: runs 16, 24" in error_of(
        doc(kind="foldover", runs=20)
    )
    assert (
        "design.multiplicity: must be holm (familywise error) or bh (false discovery rate), got 'fdr'"
        in error_of(doc(multiplicity="fdr"))
    )
    assert "did you mean 'holm'" in error_of(doc(multiplicity="hol"))
    assert "pruner: a design needs pruner none, got hyperband" in error_of({**doc(), "pruner": "hyperband"})
    raw = doc()
    raw["space"] = {**raw["space"], "batch_size": {"choice": [16, 32, 64]}}
    assert "fractional needs two-level dimensions; batch_size has 3" in error_of(raw)
    big = {**doc(kind="factorial"), "space": _many(12)}
    assert "design: a full factorial needs 4096 runs" in error_of(big)
    with pytest.raises(SweeperError, match="--set aug.rrc: the study's design varies aug.rrc"):
        parse(doc()).with_overrides({"aug.rrc": True})


def test_the_default_design_of_toggles_is_resolution_iv_and_of_choices_balanced() -> None:
    raw = doc()
    del raw["design"]["kind"]
    s = parse(raw)
    assert s.design is not None and s.design.kind == "fractional" and s.design.multiplicity == "holm"
    raw["space"] = {**raw["space"], "head": {"choice": ["linear", "se", "attention"]}}
    s = parse(raw)
    assert s.design is not None and s.design.kind == "balanced"


@pytest.mark.parametrize("k, runs", [(14, 40), (14, None), (19, 40), (5, None), (8, 24)])
def test_a_foldover_is_balanced_and_of_resolution_iv(k: int, runs: int | None) -> None:
    """Every main-effect column is orthogonal to every other and to every product of two columns."""
    x = design.foldover(k, runs)
    assert len(x) == runs or runs is None
    assert (x.sum(0) == 0).all() and resolution_iv(x) and len({tuple(r) for r in x}) == len(x)
    half = len(x) // 2
    assert (x[half:] == -x[:half]).all()  # the mirror image of the array


def test_the_shipped_ablation_is_a_complete_40_run_resolution_iv_design_in_two_seed_blocks() -> None:
    s = spec.load("ablation-aug")
    assert s.design is not None and len(s.design.dims) == 14
    planned = design.runs(s.design, s.space)
    assert len(planned) == 40 and s.design.seeds() == [0, 1]
    assert [p["seed"] for _, p in planned] == [0] * 20 + [1] * 20  # the array, then its mirror
    x = np.array([[1 if p[k] else -1 for k in s.design.dims] for _, p in planned])
    assert resolution_iv(x) and (x.sum(0) == 0).all()
    assert (x[:20].sum(0) == 0).all()  # each block balanced on its own: the seed is clear of every toggle
    design.check_trials(s.design, s.space, 40)


def test_a_trials_count_that_stops_a_design_short_is_refused_in_one_line() -> None:
    s = spec.load("ablation-aug")
    assert s.design is not None
    with pytest.raises(SweeperError) as e:
        design.check_trials(s.design, s.space, 31)
    assert str(e.value) == (
        "--trials 31 stops the study's foldover design at 31 of its 40 runs (block 1 (seed 1) would hold 11 "
        "of its 20 runs), which unbalances every effect it fits: use --trials 40"
    )


def _many(k: int) -> dict[str, Any]:
    keys = [k for k, v in spec.PARAM_TYPES.items() if v is bool and k.startswith("aug.")]
    return {key: {"bool": True} for key in keys[:k]}


def simulated_objective(s: spec.Study, truth: Truth) -> Any:
    def objective(trial: optuna.Trial) -> float:
        params = space_lib.suggest(trial, s.space)
        curve = truth.curve(params, np.random.default_rng(params["seed"] * 1000 + trial.number))
        for epoch, v in enumerate(curve, 1):
            trial.report(v, epoch)
        return max(curve)

    return objective


@pytest.mark.slow
def test_design_runs_go_through_the_sweep_loop_once_resumed_and_with_two_workers(tmp_path: Path) -> None:
    s = parse(doc(TOGGLES[:4]))  # 8 rows x 2 repeats
    assert s.design is not None
    truth = Truth({"aug.rrc": 0.05}, epochs=s.epochs, noise=0.005)
    url = f"sqlite:///{tmp_path / 'sweeper.db'}"
    objectives = [simulated_objective(s, truth)] * 2
    sweep.run(s, 10, objectives, url)  # stopped part-way
    st = sweep.run(s, 16, objectives, url)  # resumed to the whole design
    trials = st.get_trials(deepcopy=False)
    c = record.counts(trials)  # a worker racing past the last row leaves a surplus trial, never trained
    assert c["complete"] == 16 and len(trials) == 16 + c["not_counted"]
    rows = Counter(t.user_attrs[design.DESIGN_ROW] for t in trials if t.state.name == "COMPLETE")
    assert len(rows) == 16 and set(rows.values()) == {1}
    assert design.enqueue(st, s.design, s.space, 16) == 0  # nothing left to queue
    with pytest.raises(SweeperError, match="design has 16 runs .* --trials 20 would add runs outside it"):
        sweep.run(s, 20, objectives, url)


def test_a_failed_design_run_is_queued_again_once_never_replaced_by_a_sampled_trial() -> None:
    st = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    space = {f"aug.t{i}": space_lib.Dim("bool") for i in range(4)}
    d = design.Design(kind="fractional", dims=tuple(space))
    design.enqueue(st, d, space, len(design.runs(d, space)))
    first = st.ask()
    row = first.user_attrs[design.DESIGN_ROW]
    st.tell(first, state=optuna.trial.TrialState.FAIL)
    assert design.requeue_failed(st) == 1
    assert design.requeue_failed(st) == 0  # queued already: not twice
    again = [t for t in st.get_trials() if t.state == optuna.trial.TrialState.WAITING][-1]
    failed = st.get_trials()[first.number].system_attrs["fixed_params"]
    assert again.user_attrs[design.DESIGN_ROW] == row and again.system_attrs["fixed_params"] == failed
