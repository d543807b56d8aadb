"""``sweeper confirm``: the top configurations re-run with paired seeds, ranked by a lower bound."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeper.results import confirm
from sweeper.store import record
from sweeper.study.design import CONFIRM
from sweeper.submit import refit
from tests.helpers.builders import load_study

LR = FloatDistribution(1e-4, 1e-1, log=True)


def add(
    study: optuna.Study,
    value: float | None,
    lr: float,
    origin: int | None = None,
    seed: int | None = None,
    state: TrialState = TrialState.COMPLETE,
    **attrs: Any,
) -> None:
    params: dict[str, Any] = {"lr_head": lr}
    dists: dict[str, Any] = {"lr_head": LR}
    if seed is not None:
        params["seed"], dists["seed"] = seed, IntDistribution(0, 2**32 - 1)
    if origin is not None:
        attrs[CONFIRM] = origin
    diverged = str(attrs.get(record.INFEASIBLE, "")).startswith("diverged")
    study.add_trial(
        create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params=params,
            distributions=dists,
            user_attrs=attrs,
            constraints={record.DIVERGED: 1.0 if diverged else 0.0},
        )
    )


def test_the_lucky_winner_loses_to_the_steady_one_by_the_paired_lead() -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.95, 1e-2)  # trial 0: the luckiest draw
    add(st, 0.93, 1e-3)  # trial 1
    add(st, 0.93, 1e-3)  # a twin of trial 1 (same config): not a separate candidate
    assert [t.number for t in confirm.candidates(st, "maximize", 3)] == [0, 1]
    for seed, v in zip((1000, 1001, 1002), (0.88, 0.92, 0.86), strict=True):
        add(st, v, 1e-2, origin=0, seed=seed)
    for seed, v in zip((1000, 1001, 1002), (0.925, 0.93, 0.92), strict=True):
        add(st, v, 1e-3, origin=1, seed=seed)
    conf = confirm.confirmation(st, "maximize")
    assert [c.trial for c in conf.ranked] == [1, 0] and conf.winner is conf.ranked[0]
    assert conf.winner.mean(conf.seeds) == pytest.approx(0.925) and conf.runner_up is conf.ranked[1]
    # paired differences 0.045, 0.01, 0.06: mean 0.038333, sd 0.025658, t(0.90, 2 df) 1.885618
    lead = conf.gaps[conf.ranked[1].config]
    assert lead.mean == pytest.approx(0.038333, abs=1e-6) and lead.bound == pytest.approx(0.010401, abs=1e-5)
    assert confirm.headline(conf, "val_acc") == (
        "confirmed winner: trial 1 (val_acc 0.9250, mean of 3 re-runs), ahead of the runner-up (trial 0) "
        "by 3.83 points; 90% lower bound +1.04 points (one-sided paired t over 3 seeds, 2 df): separated"
    )
    lines = confirm.format_table(conf, "val_acc")
    assert "paired seeds 1000-1002, never pruned" in lines[0]
    assert lines[2].split()[:6] == ["trial", "1", "0.9300", "3/3", "0.9250", "winner"]
    assert lines[3].split()[:7] == ["trial", "0", "0.9500", "3/3", "0.8867", "+0.0383", "+0.0104"]


def test_a_failed_or_diverged_re_run_is_listed_and_its_candidate_cannot_win() -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.95, 1e-2)  # trial 0
    add(st, 0.90, 1e-3)  # trial 1
    add(st, 0.85, 3e-3)  # trial 2
    add(st, 0.99, 1e-2, origin=0, seed=1000)
    add(st, None, 1e-2, origin=0, seed=1001, state=TrialState.FAIL, fail_reason="CUDA out of memory")
    add(st, 0.0, 3e-3, origin=2, seed=1000, infeasible="diverged: loss is nan at epoch 2")
    add(st, 0.80, 3e-3, origin=2, seed=1001)
    for seed in (1000, 1001):
        add(st, 0.88, 1e-3, origin=1, seed=seed)
    conf = confirm.confirmation(st, "maximize")
    assert conf.winner is not None and conf.winner.trial == 1 and conf.runner_up is None
    assert [c.trial for c in conf.ranked] == [1, 0, 2]
    assert conf.ranked[1].missing == {1001: "failed: CUDA out of memory"}
    assert conf.ranked[2].missing == {1000: "diverged: loss is nan at epoch 2"}
    said = confirm.headline(conf, "val_acc")
    assert said is not None and "the only candidate with all its re-runs complete" in said
    lines = confirm.format_table(conf, "val_acc")
    assert lines[3].endswith("seed 1001 failed: CUDA out of memory") and lines[3].split()[3] == "1/2"


def test_no_winner_while_a_re_run_is_queued_and_refit_says_so(tmp_path: Path) -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.95, 1e-2)
    add(st, 0.90, 1e-3)
    planned = [confirm.Planned({"lr_head": 1e-2}, 0, "trial 0"), confirm.Planned({"lr_head": 1e-3}, 1, "")]
    assert confirm.enqueue(st, planned, 2) == 4
    add(st, 0.97, 1e-2, origin=0, seed=1000)  # one of the four ran (as the queued one would have)
    conf = confirm.confirmation(st, "maximize")
    assert conf.winner is None and conf.pending == 4
    said = confirm.headline(conf, "val_acc")
    assert said is not None and said.startswith("confirmation unfinished: 4 re-runs queued or running")
    spec = load_study(tmp_path, "name: c\ndata: {root: data}\nspace: {lr_head: {float: [1.0e-4, 0.1]}}\n")
    trial, why = refit.chosen(record.Recorded(st, spec, None))
    assert trial.number == 0  # the sweep's best, not the lucky re-run (0.97)
    assert why.startswith("the best trial of 'c', not a confirmed winner: confirmation unfinished")
    assert confirm.confirmation(optuna.create_study(), "maximize").ranked == ()
    assert confirm.headline(confirm.confirmation(optuna.create_study(), "maximize"), "val_acc") is None


def test_queued_re_runs_are_paired_and_queued_once() -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.9, 1e-2)
    add(st, 0.8, 1e-3)
    planned = [confirm.Planned(dict(t.params), t.number, "") for t in confirm.candidates(st, "maximize", 2)]
    assert confirm.enqueue(st, planned, 3) == 6
    assert confirm.enqueue(st, planned, 3) == 0  # resumed: nothing new
    waiting = st.get_trials(states=(TrialState.WAITING,))
    seeds = {
        n: sorted(t.system_attrs["fixed_params"]["seed"] for t in waiting if t.user_attrs[CONFIRM] == n)
        for n in (0, 1)
    }
    assert seeds == {0: [1000, 1001, 1002], 1: [1000, 1001, 1002]}
    found, pending = confirm.gather(st)
    assert pending == 6 and {c.trial: c.missing for c in found} == {
        n: {1000: "queued", 1001: "queued", 1002: "queued"} for n in (0, 1)
    }


STUDY = """
name: confirm-e2e
data: {{root: {root}}}
epochs: 1
sampler: {{name: random, seed: 1}}
pruner: {{name: median, n_startup_trials: 0, n_warmup_steps: 0}}  # would prune a re-run below the median
fixed: {{backbone: test_resnet, img_size: 32, num_workers: 0, batch_size: 8, aug: {{rrc: false}}}}
space:
  lr_head: {{float: [1.0e-3, 3.0e-2], log: true}}
"""


@pytest.mark.slow
def test_confirm_end_to_end_then_refit_says_it_refits_the_confirmed_winner(
    cli: Any, tmp_path: Path, image_folder: Path
) -> None:
    study = tmp_path / "c.yaml"
    study.write_text(STUDY.format(root=image_folder))
    assert cli("run-study", str(study), "--trials", "4").returncode == 0
    r = cli("confirm", str(study), "--top", "2", "--seeds", "2", "--workers", "2")  # two at once
    assert r.returncode == 0, r.stderr
    assert "4 re-runs queued now" in r.stdout and "never pruned" in r.stdout
    again = cli("confirm", str(study), "--top", "2", "--seeds", "2", "--json")  # done: nothing to run
    assert again.returncode == 0 and "0 re-runs queued now, 0 to run" in again.stderr
    st = optuna.load_study(study_name="confirm-e2e", storage=f"sqlite:///{Path.cwd()}/sweeper.db")
    reruns = [t for t in st.trials if CONFIRM in t.user_attrs]
    assert len(st.trials) == 8 and len(reruns) == 4
    assert sorted(t.params["seed"] for t in reruns) == [1000, 1000, 1001, 1001]
    assert {t.state for t in reruns} == {TrialState.COMPLETE}  # the study's median pruner judged none
    conf = confirm.confirmation(st, "maximize")
    won, said = conf.winner, confirm.headline(conf, "val_acc")
    assert won is not None and said is not None and said.startswith(f"confirmed winner: {won.label} ")
    assert said in again.stderr and ("90% lower bound" in said or "no runner-up" in said)
    confirmed = json.loads(again.stdout)
    assert confirmed["headline"] == said and confirmed["winner"]["trial"] == won.trial
    shown = cli("show", str(study))
    assert shown.returncode == 0 and said in shown.stdout.splitlines()
    assert "best single trial (one seed)" in shown.stdout
    refit = cli("refit-best", str(study), "--out", str(tmp_path / "out"))
    assert refit.returncode == 0, refit.stderr
    assert (
        f"refitting trial {won.refit_trial} " in refit.stdout
        and "the confirmed winner of 'confirm-e2e'" in refit.stdout
    )
