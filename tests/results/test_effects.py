"""The effects fit against a simulated objective whose effects are known (no training)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from sweeper.results import effects, effects_table
from sweeper.store import record as record_lib
from sweeper.study import design, spec
from sweeper.study import space as space_lib
from sweeper.sweep import loop as sweep
from tests.helpers.simulated import Truth

TOGGLES = [
    f"aug.{k}" for k in ("rrc", "hflip", "vflip", "rotation", "translate", "color_jitter", "blur", "erasing")
]
NOISE = 0.01  # one run's accuracy scatter: the binomial SE of ~0.9 accuracy on 900 validation images
RUNS = 32  # a resolution IV design: a 16-run array and its mirror image
SE = 2 * NOISE / math.sqrt(RUNS)  # standard error of one effect (on - off): 0.0035
TRUTH = Truth(
    {
        "aug.rrc": 0.025,  # 7 SE, a slow starter
        "aug.hflip": -0.020,
        "aug.vflip": 0.018,  # 5 SE, a slow starter
        "aug.rotation": -0.008,  # 2.3 SE
        "aug.translate": 0.0075,  # 2.1 SE
        "aug.color_jitter": 0.001,  # the small ones: well under one SE
        "aug.blur": -0.0015,
        "aug.erasing": 0.0,
    },
    slow=("aug.rrc", "aug.vflip"),
    noise=NOISE,
)


def study_doc(seed: int, kind: str = "foldover", toggles: list[str] = TOGGLES) -> dict[str, Any]:
    """A 32-run resolution IV foldover (a 16-run array, then its mirror); fractional and factorial run
    their design twice (two seeds: every setting twice)."""
    size = {"runs": RUNS} if kind == "foldover" else {"repeats": 2}
    return {
        "name": f"truth-{seed}",
        "data": {"root": "builtin:digits"},
        "epochs": TRUTH.epochs,
        "sampler": {"name": "random", "seed": seed},
        "space": {k: {"bool": True} for k in toggles},
        "design": {"kind": kind, **size, "seed": seed},
    }


def run_simulated(s: spec.Study, truth: Truth, storage: Any, seed: int) -> optuna.Study:
    """The real design, queued in a real Optuna study; each queued run asks, suggests and tells."""
    assert s.design is not None
    st = sweep.open_study(s, None, store=storage)
    n = design.enqueue(st, s.design, s.space, len(design.runs(s.design, s.space)))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        trial = st.ask()
        st.tell(trial, max(truth.curve(space_lib.suggest(trial, s.space), rng)))
    return st


def fitted(seed: int) -> dict[str, effects.Effect]:
    s = spec.parse(study_doc(seed), Path("truth.yaml"))
    assert s.design is not None
    st = run_simulated(s, TRUTH, optuna.storages.InMemoryStorage(), seed)
    f = effects.fit(st.get_trials(deepcopy=False), s.design, s.space, "val_acc", "maximize", n_val=900)
    assert f.runs == RUNS and f.df == RUNS - 1 - 1 - len(TOGGLES)  # the mean, the second seed's block
    return {e.term: e for e in f.effects}


def test_known_effects_are_recovered_and_small_ones_flagged_in_50_seeded_repeats() -> None:
    """Every effect >= 2 SE has its sign right (and never the opposite verdict) in >= 90% of repeats;
    effects >= 5 SE are called helps/hurts; effects under one SE are "cannot resolve"."""
    big = {k: e for k, e in TRUTH.effects.items() if abs(e) >= 2 * SE}
    strong = {k: e for k, e in TRUTH.effects.items() if abs(e) >= 5 * SE}
    small = [k for k, e in TRUTH.effects.items() if abs(e) < SE]
    assert len(big) == 5 and len(strong) == 3 and len(small) == 3
    signs_right = strong_called = 0
    flagged = dict.fromkeys(small, 0)
    for seed in range(50):
        got = fitted(seed)
        wrong = {"helps": "hurts", "hurts": "helps"}
        signs_right += all(
            np.sign(got[k].estimate) == np.sign(e) and got[k].verdict != wrong[_verdict(e)]
            for k, e in big.items()
        )
        strong_called += all(got[k].verdict == _verdict(e) for k, e in strong.items())
        for k in small:
            flagged[k] += got[k].verdict == "cannot resolve"
    assert signs_right >= 45, signs_right
    assert strong_called >= 45, strong_called
    assert all(n >= 43 for n in flagged.values()), flagged  # 95% expected; a false call is a 5% event


def _verdict(effect: float) -> str:
    return "helps" if effect > 0 else "hurts"


def test_the_fit_reports_what_the_study_can_resolve() -> None:
    s = spec.parse(study_doc(0, "fractional"), Path("truth.yaml"))
    assert s.design is not None
    st = run_simulated(s, TRUTH, optuna.storages.InMemoryStorage(), 0)
    f = effects.fit(st.get_trials(deepcopy=False), s.design, s.space, "val_acc", "maximize", n_val=900)
    assert f.sigma is not None and 0.5 * NOISE < f.sigma < 2 * NOISE
    assert f.binomial_se == pytest.approx(math.sqrt(0.8 * 0.2 / 900), rel=0.05)
    assert f.detectable is not None and f.detectable > f.effect  # 0.5 points is out of reach at 32 runs
    text = "\n".join(effects_table.format_table(f))
    assert "validation: 900 images, binomial SE 0.013" in text and "too small for this study" in text
    assert text.splitlines()[-1].split()[-1] in ("hurts", "resolve")  # worst last: hflip hurts
    assert "val_acc of 32 of 32 design runs (complete design)" in text and "seed as a block term" in text
    assert "Holm-adjusted p < 0.05 across the family of all 8 terms" in text
    assert "the chance of any false helps/hurts in the table is at most 5%" in text
    assert "the effects and intervals are those on this validation set, conditional on it" in text
    # 16 settings run twice: 15 df of replicate scatter, 7 of lack of fit; sigma from the lack of fit
    assert f.noise.source == "lack of fit" and f.noise.pure_df == 15 and f.noise.df == 7
    assert "not from the 15 df of replicate scatter" in text and "resolution IV" in text


def test_interactions_and_choice_levels_are_fitted_when_asked() -> None:
    raw = {**study_doc(0, "factorial", TOGGLES[:3]), "name": "inter"}
    raw["space"]["head"] = {"choice": ["linear", "se", "attention"]}
    s = spec.parse(raw, Path("truth.yaml"))
    assert s.design is not None and len(design.runs(s.design, s.space)) == 48
    st = sweep.open_study(s, None, store=optuna.storages.InMemoryStorage())
    design.enqueue(st, s.design, s.space, 48)
    for _ in range(48):
        t = st.ask()
        p = space_lib.suggest(t, s.space)
        both = 0.03 if p["aug.rrc"] and p["aug.hflip"] else 0.0  # a pure interaction
        st.tell(t, 0.8 + both + (0.02 if p["head"] == "se" else 0.0) + 0.001 * (t.number % 3))
    f = effects.fit(st.get_trials(), s.design, s.space, "val_acc", "maximize", interactions=True)
    got = {e.term: e for e in f.effects}
    # rrc helps by 0.03 with hflip on and 0 with it off: the interaction is half that difference
    assert got["aug.rrc x aug.hflip"].estimate == pytest.approx(0.015, abs=0.002)
    assert got["head=se vs linear"].estimate == pytest.approx(0.02, abs=0.003)
    assert got["head=se vs linear"].verdict == "helps"


def test_verdicts_call_helps_or_hurts_only_below_the_adjusted_level() -> None:
    assert effects.verdict(0.001, 0.02, 0.005, 0.01) == "helps"
    assert effects.verdict(-0.02, -0.001, 0.005, 0.049) == "hurts"
    assert effects.verdict(0.001, 0.02, 0.005, 0.2) == "cannot resolve"  # the interval alone: not called
    assert effects.verdict(-0.003, 0.004, 0.005, 0.6) == "negligible"
    assert effects.verdict(-0.01, 0.004, 0.005, 0.3) == "cannot resolve"


def recorded_design_study(
    work: Path, truth: Truth = TRUTH, trials: int = RUNS
) -> tuple[spec.Study, optuna.Study]:
    """A design study in ./sweeper.db with simulated runs and a study record (900 validation images)."""
    import yaml

    from sweeper.store import record

    path = work / "truth.yaml"
    path.write_text(yaml.safe_dump(study_doc(0)))
    s = spec.load(str(path))
    rec = record.StudyRecord(
        spec.to_document(s), path.read_text(), str(path), {}, {"images": {"val": 900}}, record.versions()
    )
    objective = _simulated(s, truth)
    st = sweep.run(
        s, trials, objective, f"sqlite:///{work / 'sweeper.db'}", record=rec
    )  # fewer: stopped early
    return s, st


def _simulated(s: spec.Study, truth: Truth) -> Any:
    def objective(trial: optuna.Trial) -> float:
        params = space_lib.suggest(trial, s.space)
        return max(truth.curve(params, np.random.default_rng(trial.number)))

    return objective


@pytest.mark.slow
def test_show_ablation_and_the_report_fit_a_design_study(isolated: Path, cli: Any) -> None:
    from sweeper.results import report

    s, st = recorded_design_study(isolated)
    res = cli("show", "truth.yaml", "--ablation")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "32 of 32 design runs (complete design)" in out and "binomial SE" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("aug.")}
    assert rows["aug.rrc"][-1] == "helps" and rows["aug.hflip"][-1] == "hurts"
    html = report.render(s, st, None)
    assert 'id="effects"' in html and "fitted jointly" in html and 'id="ablation"' not in html
    assert "± SE (binomial)" in html


@pytest.mark.slow
def test_show_and_the_report_mark_a_design_stopped_early_as_incomplete(isolated: Path, cli: Any) -> None:
    from sweeper.results import report

    s, st = recorded_design_study(isolated, trials=27)
    res = cli("show", "truth.yaml", "--ablation")
    assert res.returncode == 0, res.stderr
    assert "27 of 32 design runs (incomplete: block 1 (seed 1) has 11 of 16)" in res.stdout
    assert "design runs without a result (5)" in res.stdout and "(not run)" in res.stdout
    html = report.render(s, st, None)
    assert "27 of 32 design runs (incomplete: block 1 (seed 1) has 11 of 16)" in html


DIGITS = """
# vertical flips turn a 6 into a 9: on the digits, aug.vflip must come out as "hurts"
name: digits-design
data: {root: "builtin:digits"}
epochs: 1
sampler: {name: random, seed: 0}
design: {kind: fractional, repeats: 1, seed: 0}
fixed:
  backbone: test_resnet
  img_size: 16  # the digits are 8x8 pixels: 16 loses nothing, and each run is 4x fewer pixels than 32
  num_workers: 0
  batch_size: 32
  lr_backbone: 3.0e-3
  lr_head: 1.0e-2
  warmup_epochs: 0.2
  aug: {rrc: false, vflip_p: 1.0}  # every train image upside down: a strong signal in 8 short runs
space:
  aug.vflip: {bool: true}
  aug.hflip: {bool: true}
  aug.rotation: {bool: true}
  aug.erasing: {bool: true}
"""


@pytest.mark.slow
def test_a_real_design_on_the_digits_finds_that_vertical_flips_hurt(isolated: Path, cli: Any) -> None:
    """8 real 1-epoch runs (a resolution IV 2^(4-1) design) on the built-in digits at 16 px, about 20 s on
    2 CPU cores. With vflip_p 0.5 the effect (about -6 points) needs 16 runs to resolve; at 1.0 it is
    far larger than the noise (about -40 points, its 95% interval [-0.51, -0.34])."""
    (isolated / "digits-design.yaml").write_text(DIGITS)
    r = cli("run-study", "digits-design.yaml", "--trials", "8")
    assert r.returncode == 0, r.stderr
    res = cli("show", "digits-design.yaml", "--ablation")
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line.startswith("aug.")}
    assert rows["aug.vflip"][-1] == "hurts", res.stdout
    assert "8 of 8 design runs" in res.stdout and "validation: 355 images" in res.stdout


def simulated_with_losses(s: spec.Study, lost: dict[int, str], upto: int | None = None) -> optuna.Study:
    """The design's runs with simulated results; run n in ``lost`` fails or diverges (its reason)."""
    assert s.design is not None
    st = sweep.open_study(s, None, store=optuna.storages.InMemoryStorage())
    n = design.enqueue(st, s.design, s.space, upto or len(design.runs(s.design, s.space)))
    rng = np.random.default_rng(0)
    for i in range(n):
        trial = st.ask()
        value = max(TRUTH.curve(space_lib.suggest(trial, s.space), rng))
        if lost.get(i, "").startswith("diverged"):
            trial.set_user_attr(record_lib.INFEASIBLE, lost[i])
            trial.set_constraint(record_lib.DIVERGED, 1.0)
        elif i in lost:
            trial.set_user_attr(record_lib.FAIL_REASON, lost[i])
            st.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        st.tell(trial, value)
    return st


def test_design_runs_without_a_result_are_listed_with_their_reason_and_what_losing_them_did() -> None:
    s = spec.parse(study_doc(0), Path("truth.yaml"))
    assert s.design is not None
    st = simulated_with_losses(s, {3: "CUDA out of memory", 20: "diverged: loss nan at epoch 2"})
    f = effects.fit(st.get_trials(), s.design, s.space, "val_acc", "maximize", n_val=900)
    assert f.runs == 30 and [(m.state, m.why) for m in f.design.missing] == [
        ("failed", "CUDA out of memory"),
        ("diverged", "diverged: loss nan at epoch 2"),
    ]
    text = "\n".join(effects_table.summary(f))
    labels = [label for label, _ in design.runs(s.design, s.space)]
    assert (
        f"design runs without a result (2): {labels[3]} (failed: CUDA out of memory); {labels[20]} (diverged"
        in text
    )
    assert "val_acc of 30 of 32 design runs (incomplete: block 0 (seed 0) has 15 of 16; block 1" in text
    assert "without them the design is unbalanced: " in text and "main effects now correlated" in text


def test_a_design_cut_short_is_marked_incomplete_by_block() -> None:
    s = spec.parse(study_doc(0), Path("truth.yaml"))
    assert s.design is not None
    st = simulated_with_losses(s, {}, upto=27)
    f = effects.fit(st.get_trials(), s.design, s.space, "val_acc", "maximize", n_val=900)
    summary = effects_table.summary(f)
    assert summary[0].startswith(
        "val_acc of 27 of 32 design runs (incomplete: block 1 (seed 1) has 11 of 16)"
    )
    assert "design runs without a result (5): " in "\n".join(summary) and "(not run)" in "\n".join(summary)


def test_interactions_fit_only_what_the_runs_can_estimate_and_name_the_aliased_rest() -> None:
    """8 toggles in a 16-run resolution IV fraction: the 28 two-way interactions sit in 7 alias chains of
    4, none estimable by itself; the main effects stay as without interactions (orthogonal to them)."""
    s = spec.parse(study_doc(0, "fractional"), Path("truth.yaml"))
    assert s.design is not None
    st = run_simulated(s, TRUTH, optuna.storages.InMemoryStorage(), 0)
    trials = st.get_trials(deepcopy=False)
    plain = effects.fit(trials, s.design, s.space, "val_acc", "maximize", n_val=900)
    f = effects.fit(trials, s.design, s.space, "val_acc", "maximize", n_val=900, interactions=True)
    assert len(f.aliased) == 28 and all(" x " in a for a in f.aliased)
    assert [e.term for e in f.effects] == [e.term for e in plain.effects]
    got = {e.term: e.estimate for e in f.effects}
    assert all(got[e.term] == pytest.approx(e.estimate) for e in plain.effects)
    text = "\n".join(effects_table.format_table(f))
    assert (
        "not estimable from these runs, so not in the table (aliased): 28 terms: aug.rrc x aug.hflip" in text
    )
    assert " x " not in "\n".join(text.split("\n\n")[1:])  # no interaction row in the table


def test_benjamini_hochberg_is_the_study_files_choice_and_the_table_names_it() -> None:
    raw = study_doc(0)
    raw["design"]["multiplicity"] = "bh"
    s = spec.parse(raw, Path("truth.yaml"))
    assert s.design is not None and s.design.multiplicity == "bh"
    st = run_simulated(s, TRUTH, optuna.storages.InMemoryStorage(), 0)
    f = effects.fit(st.get_trials(deepcopy=False), s.design, s.space, "val_acc", "maximize", n_val=900)
    text = effects_table.format_table(f)
    assert "Benjamini-Hochberg-adjusted p < 0.05" in "\n".join(text)
    assert "expected share of false calls among the helps/hurts is at most 5%" in "\n".join(text)
    head = next(line for line in text if line.startswith("term"))
    assert "p (Benjamini-Hochberg)" in head
    holm = {
        e.term: e.p_adjusted
        for e in effects.fit(
            st.get_trials(),
            dataclasses.replace(s.design, multiplicity="holm"),
            s.space,
            "val_acc",
            "maximize",
        ).effects
    }
    assert all(e.p_adjusted <= holm[e.term] + 1e-12 for e in f.effects)


def test_a_foldover_has_no_replicates_so_sigma_is_all_lack_of_fit() -> None:
    raw = {**study_doc(0), "name": "fold"}
    raw["design"] = {"kind": "foldover", "seed": 0}
    s = spec.parse(raw, Path("fold.yaml"))
    assert s.design is not None
    st = run_simulated(s, TRUTH, optuna.storages.InMemoryStorage(), 0)
    f = effects.fit(st.get_trials(deepcopy=False), s.design, s.space, "val_acc", "maximize", n_val=900)
    assert f.runs == 24 and f.noise.source == "residual" and f.df == 24 - 1 - 1 - 8
    assert "all lack of fit (no run repeats another's settings)" in effects_table.noise_line(f)
