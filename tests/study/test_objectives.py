"""Multi-objective studies: objectives parsed, costs measured, the Pareto front, and picking from it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.errors import SweeperError
from sweeper.study import objectives
from sweeper.study import spec as spec_lib
from sweeper.study.config import build_config
from sweeper.sweep import retention
from sweeper.train import costs
from tests.helpers.builders import config, load_study, write_study

BASE = "data: {root: builtin:digits}\nfixed: {backbone: test_resnet}\n"


def parse(tmp_path: Path, text: str) -> spec_lib.Study:
    return load_study(tmp_path, BASE + text)


def test_objectives_make_a_trade_off_study_that_round_trips(tmp_path: Path) -> None:
    s = parse(tmp_path, "objectives: [{metric: val_acc}, {metric: latency_ms}, {metric: gmacs}]\n")
    assert s.objectives == [("val_acc", "maximize"), ("latency_ms", "minimize"), ("gmacs", "minimize")]
    assert s.multi and s.pruner == {"name": "none"}  # Optuna prunes single objectives only
    assert spec_lib.parse(spec_lib.to_document(s), s.path) == s
    single = parse(tmp_path, "objective: {metric: val_loss}\n")
    assert not single.multi and single.objectives == [("val_loss", "minimize")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("objectives: [{metric: latency_ms}, {metric: val_acc}]\n", "objectives[0].metric: must be one of"),
        ("objectives: [{metric: val_acc}, {metric: gmac}]\n", "did you mean 'gmacs'"),
        ("objectives: [{metric: val_acc}, {metric: gmacs}, {metric: gmacs}]\n", "already an objective"),
        ("objectives: [{metric: val_acc}, {metric: gmacs}]\npruner: median\n", "set pruner: none"),
        ("objectives: [{metric: val_acc}, {metric: gmacs}]\nsampler: cmaes\n", "cmaes optimizes one"),
        ("objectives: []\n", "objectives: must be a list"),
        ("objective: {metric: val_acc}\nobjectives: [{metric: val_acc}]\n", "not both"),
        ("objectives: [{metric: val_acc}, {metric: num_params, direction: up}]\n", "maximize or minimize"),
    ],
)
def test_bad_objectives_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SweeperError, match="s.yaml: ") as e:
        parse(tmp_path, text)
    assert message in str(e.value)


def test_a_child_objectives_replace_the_base_objective(tmp_path: Path) -> None:
    write_study(tmp_path / "base.yaml", BASE + "objective: {metric: val_acc}\npruner: none\n")
    child = write_study(
        tmp_path / "child.yaml", "base: base\nobjectives: [{metric: val_acc}, {metric: gmacs}]\n"
    )
    s = spec_lib.load(str(child))
    assert s.objectives == [("val_acc", "maximize"), ("gmacs", "minimize")]


def trial(number: int, acc: float, cost: float, feasible: bool = True) -> optuna.trial.FrozenTrial:
    t = create_trial(
        values=[acc, cost],
        params={"x": float(number)},
        distributions={"x": FloatDistribution(0, 100)},
        user_attrs={objectives.MEASURED: {"latency_ms": cost, "num_params": 1000.0 * number}},
        constraints={"diverged": 0.0 if feasible else 1.0},
    )
    t.number = number
    return t


TWO = [("val_acc", "maximize"), ("latency_ms", "minimize")]


def test_the_front_keeps_only_trials_nothing_beats_on_every_objective() -> None:
    trials = [
        trial(0, 0.90, 10.0),
        trial(1, 0.85, 5.0),
        trial(2, 0.80, 7.0),  # beaten by 1 on both
        trial(3, 0.95, 30.0),
        trial(4, 0.99, 1.0, feasible=False),  # diverged: never on the front
        trial(5, 0.85, 5.0),  # a tie with 1: kept
    ]
    assert [t.number for t in objectives.front(trials, TWO)] == [0, 1, 3, 5]


def test_a_rule_filters_then_orders() -> None:
    front = [trial(0, 0.90, 10.0), trial(1, 0.85, 5.0), trial(3, 0.95, 30.0)]
    known = ["val_acc", "latency_ms", "num_params"]
    chosen, why = objectives.pick(front, objectives.parse_rule("val_acc>=0.88,min:latency_ms", known), TWO)
    assert chosen is not None and chosen.number == 0 and "2 passed" in why
    chosen, _ = objectives.pick(front, objectives.parse_rule("max:val_acc", known), TWO)
    assert chosen is not None and chosen.number == 3
    chosen, _ = objectives.pick(front, objectives.parse_rule("latency_ms<20, min:num_params", known), TWO)
    assert chosen is not None and chosen.number == 0
    none, why = objectives.pick(front, objectives.parse_rule("val_acc>=0.99,min:latency_ms", known), TWO)
    assert none is None and "the candidates' best: 0.95" in why


def test_a_tie_on_the_rule_goes_to_the_better_trial() -> None:
    same_size = [trial(0, 0.90, 10.0), trial(1, 0.95, 12.0), trial(2, 0.97, 30.0)]
    for t in same_size:
        t.user_attrs[objectives.MEASURED] = {**t.user_attrs[objectives.MEASURED], "num_params": 1000.0}
    rule = objectives.parse_rule("min:num_params", ["val_acc", "latency_ms", "num_params"])
    chosen, _ = objectives.pick(same_size, rule, TWO)
    assert chosen is not None and chosen.number == 2  # all the same size: the most accurate


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("val_acc>=0.9", "say which trial wins"),
        ("val_ac>=0.9,min:latency_ms", "did you mean 'val_acc'"),
        ("val_acc~0.9,min:latency_ms", "cannot read 'val_acc~0.9'"),
        ("val_acc>=0.9.1,min:latency_ms", "is not a number"),
    ],
)
def test_bad_rules_say_what_to_write(rule: str, message: str) -> None:
    with pytest.raises(SweeperError, match="--pick") as e:
        objectives.parse_rule(rule, ["val_acc", "latency_ms"])
    assert message in str(e.value)


def test_costs_are_counted_on_the_meta_device() -> None:
    cfg = build_config({"backbone": "resnet18", "pretrained": True, "img_size": 224})
    got = costs.counted(cfg, 1000, ("num_params", "gmacs"))  # pretrained: yet nothing is loaded
    assert got["num_params"] == 11_689_512  # torchvision's figure for ResNet-18
    assert got["gmacs"] == pytest.approx(1.814, abs=0.01)  # the published 1.8 GMACs at 224 px
    big = costs.counted(build_config({"backbone": "resnet18", "img_size": 448}), 1000, ("gmacs",))
    assert big["gmacs"] == pytest.approx(got["gmacs"] * 4, rel=0.01)  # four times the pixels


def test_latency_is_timed_at_batch_1_and_at_the_batch_size() -> None:
    import torch

    cfg = config(img_size=32, batch_size=4, pretrained=False)
    got = costs.latency(cfg, 10, torch.device("cpu"))
    assert got["latency_batch"] == 4.0
    assert got["latency_ms"] > 0 and got["latency_ms_batch"] > 0


def test_retention_keeps_the_whole_front() -> None:
    class Tracker:
        def __init__(self) -> None:
            self.deleted: list[str] = []

        def delete_artifacts(self, run_id: str, suffixes: tuple[str, ...], why: str) -> bool:
            self.deleted.append(run_id)
            return True

    st = optuna.create_study(directions=["maximize", "minimize"])
    for t in [trial(0, 0.90, 10.0), trial(1, 0.85, 5.0), trial(2, 0.80, 7.0), trial(3, 0.95, 30.0)]:
        t.user_attrs["mlflow_run_id"] = f"run{t.number}"
        st.add_trial(t)
    tracker = Tracker()
    retention.prune_weights(st, tracker, 1, "maximize", TWO)
    assert tracker.deleted == ["run2"]  # 3 is the best val_acc; 0, 1 and 3 are the front


TRADE = """
name: trade
data: {{root: {data}}}
objectives:
  - {{metric: val_acc, direction: maximize}}
  - {{metric: latency_ms, direction: minimize}}
  - {{metric: gmacs}}
epochs: 1
sampler: {{name: nsga2, seed: 0, population_size: 2}}
fixed: {{img_size: 32, num_workers: 0, batch_size: 8, pretrained: false, lr_head: 0.01, aug: {{rrc: false}}}}
space:
  backbone: {{choice: [test_resnet, test_efficientnet]}}
  lr_backbone: {{float: [1.0e-3, 1.0e-2], log: true}}
  aug.erasing: {{bool: true}}
"""


@pytest.mark.slow
def test_a_two_cost_study_has_a_front_and_refit_picks_by_the_rule(
    cli, tmp_path: Path, image_folder: Path
) -> None:
    study = write_study(tmp_path / "trade.yaml", TRADE.format(data=image_folder))
    r = cli("run-study", str(study), "--trials", "3")
    assert r.returncode == 0, r.stderr
    assert "Pareto front (" in r.stdout
    shown = cli("show", str(study), "--json")
    view = json.loads(shown.stdout)
    front = view["pareto_front"]
    assert front and all(
        {"val_acc", "latency_ms", "gmacs", "num_params"} <= set(t["objectives"]) for t in front
    )
    text = cli("show", str(study)).stdout
    for t in front:  # the text lists the same front
        assert any(
            line.split()[:1] == [str(t["number"])] for line in text.splitlines() if "Pareto" not in line
        )

    st = optuna.load_study(study_name="trade", storage="sqlite:///sweeper.db")
    assert all(not t.intermediate_values for t in st.trials)  # nothing reported: nothing to prune on
    assert all(len(t.values) == 3 for t in st.trials if t.state == TrialState.COMPLETE)

    ablation = cli("show", str(study), "--ablation").stdout  # read from the curves kept beside Optuna
    assert "val_acc at epoch 1 (highest value up to that epoch) of 3 trials (3 complete" in ablation

    refused = cli("refit-best", str(study), "--out", "out")
    assert refused.returncode == 2 and "Pareto front" in refused.stderr and "--pick" in refused.stderr
    rule = "val_acc>=0,min:gmacs"
    # the least gmacs; trials of one backbone tie there, and a tie goes to the better val_acc, then
    # latency (the study's objectives in order), then the earlier trial
    expected = min(
        front,
        key=lambda t: (
            t["objectives"]["gmacs"],
            -t["objectives"]["val_acc"],
            t["objectives"]["latency_ms"],
            t["number"],
        ),
    )
    r = cli("refit-best", str(study), "--out", "out", "--pick", rule)
    assert r.returncode == 0, r.stderr
    assert f"refitting trial {expected['number']} " in r.stdout and "picked by" in r.stdout
    written = yaml.safe_load((Path("out") / "config.yaml").read_text())
    assert written["refit_of_trial"] == expected["number"]

    exported = cli("export-best", str(study), "--pick", rule, "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["study"]["fixed"]["backbone"] == expected["params"]["backbone"]

    report = cli("report", str(study), "--out", "report.html", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["out"] == "report.html" and "wrote report.html" in report.stderr
    assert 'id="plot-pareto"' in Path("report.html").read_text()


def test_a_warm_start_carries_every_objective_and_refuses_other_directions(tmp_path: Path) -> None:
    from sweeper.study import starts

    space = parse(
        tmp_path, "objective: {metric: val_acc}\nspace: {lr_head: {float: [1.0e-4, 1.0e-1]}}\n"
    ).space
    donor = optuna.create_study(study_name="donor", directions=["maximize", "minimize"])
    for n, (acc, ms) in enumerate([(0.9, 10.0), (0.8, 2.0)]):
        donor.add_trial(
            create_trial(
                values=[acc, ms],
                params={"lr_head": 0.01 * (n + 1)},
                distributions={"lr_head": FloatDistribution(1e-4, 1e-1)},
            )
        )
    st = optuna.create_study(directions=["maximize", "minimize"])
    assert starts.warm_start(st, donor, space) == 2
    assert sorted(t.values for t in st.trials) == [[0.8, 2.0], [0.9, 10.0]]
    with pytest.raises(SweeperError, match="same objectives"):
        starts.warm_start(optuna.create_study(direction="maximize"), donor, space)


def test_a_stored_study_with_other_objectives_is_refused(tmp_path: Path) -> None:
    from sweeper.results import confirm
    from sweeper.sweep import loop as sweep

    url = f"sqlite:///{tmp_path / 'o.db'}"
    trade = parse(tmp_path, "objectives: [{metric: val_acc}, {metric: gmacs}]\n")
    optuna.create_study(study_name=trade.name, storage=url, direction="maximize")  # made by an older run
    with pytest.raises(SweeperError, match=r"has 1 objective\(s\) \(maximize\); the study file now has"):
        sweep.open_study(trade, url)
    with pytest.raises(SweeperError, match="Pareto front with `sweeper refit-best --pick"):
        confirm.spec_for(trade)  # re-runs by one metric would only join the front


@pytest.mark.slow
def test_a_missing_cost_fails_the_trial_instead_of_a_made_up_value(
    tmp_path: Path, image_folder: Path
) -> None:
    from sweeper.data import images as data_lib
    from sweeper.store import tracking
    from sweeper.sweep import trial as trial_lib
    from sweeper.sweep import workers
    from sweeper.sweep.progress import Progress

    text = (
        f"data: {{root: {image_folder}}}\nepochs: 1\n"
        "objectives: [{metric: val_acc}, {metric: latency_ms}]\n"
        "fixed: {backbone: test_resnet, img_size: 32, num_workers: 0, batch_size: 8, pretrained: false}\n"
    )
    trade = spec_lib.load(str(write_study(tmp_path / "t.yaml", text)))
    data = data_lib.scan(trade.data_root)
    st = optuna.create_study(directions=["maximize", "minimize"])
    t = st.ask()
    ctx = trial_lib.Context(trade, t, tracking.NO_RUN, Path(""), tmp_path, tracking.NullTracker())
    job = workers.Job(trade.resolve({}), data, "val_acc", tmp_path, latency=False)  # not timed
    outcome = trial_lib.attempt(ctx, job, Progress(1, 1, "val_acc"), len(data.classes))
    assert outcome.state == "failed" and outcome.reason == "trained, but latency_ms was not measured"
    job = dataclasses.replace(job, latency=True)
    outcome = trial_lib.attempt(ctx, job, Progress(1, 1, "val_acc"), len(data.classes))
    assert outcome.state == "complete"
    assert trial_lib._values(ctx, 0.5) == [0.5, t.user_attrs[objectives.MEASURED]["latency_ms"]]
