"""The configuration a design's effects fit predicts best: found even when the design never ran it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from sweeper.results import confirm, predicted
from sweeper.study import design
from sweeper.study import space as space_lib
from sweeper.study import spec as spec_lib
from sweeper.sweep import loop

EFFECTS = {"aug.hflip": 0.05, "aug.vflip": 0.03, "aug.erasing": -0.02, "aug.blur": 0.04}  # on - off, halved
# The best combination is hflip, vflip and blur on, erasing off. The 8-run fractional design of four
# toggles runs blur = hflip x vflip x erasing, so that combination is not among its rows.


def design_study(runs: int | None = None) -> tuple[spec_lib.Study, optuna.Study]:
    doc: dict[str, Any] = {
        "name": "predict",
        "data": {"root": "data"},
        "sampler": {"name": "random", "seed": 0},
        "space": {k: {"bool": True} for k in EFFECTS},
        "design": {"kind": "fractional"},
    }
    s = spec_lib.parse(doc, Path("predict.yaml"))
    assert s.design is not None
    st = loop.open_study(s, None, store=optuna.storages.InMemoryStorage())
    n = design.enqueue(st, s.design, s.space, runs or len(design.runs(s.design, s.space)))
    for _ in range(n):
        trial = st.ask()
        params = space_lib.suggest(trial, s.space)
        st.tell(trial, 0.5 + sum(e if params[k] else -e for k, e in EFFECTS.items()))
    return s, st


def test_the_fit_predicts_the_best_combination_the_design_never_ran_and_confirm_queues_it() -> None:
    s, st = design_study()
    assert s.design is not None
    best = {k: v > 0 for k, v in EFFECTS.items()}
    ran = [{k: t.params[k] for k in EFFECTS} for t in st.trials]
    assert len(ran) == 8 and best not in ran
    guess = predicted.best(st.trials, s.design, s.space, "maximize")
    assert guess is not None and guess.params == best
    assert abs(guess.value - (0.5 + sum(abs(e) for e in EFFECTS.values()))) < 1e-9
    planned = confirm.plan(st, s, 2)
    assert [p.trial for p in planned][-1] == confirm.PREDICTED and planned[-1].params == best
    assert planned[-1].why.startswith("the effects fit's predicted best (val_acc 0.6400 predicted)")
    assert confirm.enqueue(st, planned, 2) == 6
    worst = predicted.best(st.trials, s.design, s.space, "minimize")
    assert worst is not None and worst.params == {k: v < 0 for k, v in EFFECTS.items()}


def test_no_prediction_until_every_main_effect_can_be_estimated() -> None:
    s, st = design_study(runs=3)  # 3 runs for 5 coefficients
    assert s.design is not None and predicted.best(st.trials, s.design, s.space, "maximize") is None
    assert [p.trial for p in confirm.plan(st, s, 5)] == [
        t.number for t in confirm.candidates(st, "maximize", 5)
    ]
