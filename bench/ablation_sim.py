"""Ground truth for `sweeper show --ablation`: do its verdicts and intervals hold their stated error rates?

A SIMULATED world (no training) run through sweeper's own code: the shipped `ablation-aug` study file
(its design, queued in a real Optuna study, each run asked, suggested, reported epoch by epoch and told),
then `sweeper.results.effects.fit` (the joint fit, the Holm or Benjamini-Hochberg verdicts).

The world, new for each repeat:
- a validation set of N images shared by every run of the repeat (300, as the study's split): image i
  has a difficulty a_i ~ Normal(MU, TAU_IMAGE) on a probit scale;
- a configuration x of the 14 toggles has a quality g(x): a main effect per toggle, and interactions:
  MixUp and CutMix substitute for each other (both on gain what one gains), so do RandAugment and
  AugMix, and random-resized-crop works better with translation;
- a run of x in block b (one seed: same data order and head init for the block's runs) gets image i
  right when a_i + g(x) + s_b + u_run + e_run,i > 0: s_b the seed's shift shared by its block, u the
  run's own luck, e which borderline images it happens to flip. Its accuracy is the share right, so the
  noise of a fixed validation set is binomial-like and correlated across runs (they share the images);
- slow starters (MixUp, CutMix, RandAugment, erasing) rise later: each run's curve is reported per
  epoch, and at the 20-epoch budget a run with all four on is still ~1 point short of where it heads.

Truth, exact (no Monte Carlo): the effect of a toggle is the mean over all 2^14 configurations of the
expected metric with it on minus with it off (the average effect the design estimates), either on this
validation set (what the intervals claim to cover: conditional on the shared images) or on the image
population (reported too). The SE of an effect is 2 sigma / sqrt(runs), sigma the within-block sd of one
run's metric (measured once by Monte Carlo).

    python bench/ablation_sim.py                    # 200 repeats of the shipped study, about 2 min on 2 cores
    python bench/ablation_sim.py --design '{"kind": "balanced", "runs": 24, "repeats": 2}'   # the old one
    python bench/ablation_sim.py --multiplicity bh --fail 0.05 --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from scipy import special  # noqa: E402

from sweeper.results import effects  # noqa: E402
from sweeper.study import design as design_lib  # noqa: E402
from sweeper.study import space as space_lib  # noqa: E402
from sweeper.study import spec as spec_lib  # noqa: E402
from sweeper.sweep import loop  # noqa: E402

MU = 1.66  # mean image easiness: about 85% accuracy
TAU_IMAGE = 1.5  # spread of image difficulty
TAU_BLOCK = 0.04  # a seed's shift, shared by the runs of its block
TAU_RUN = 0.04  # a run's own luck
TAU_FLIP = 0.5  # which borderline images a run gets right
TAU_CONFIG = 0.35  # which images a configuration gets right, whatever its seed (shared by its runs)
EPOCHS = 20
EFFECTS = {  # on - off, in accuracy points at the population's 85% (converted to the probit scale)
    "aug.rrc": 3.0,
    "aug.hflip": 1.5,
    "aug.vflip": -2.5,
    "aug.rotation": -0.8,
    "aug.translate": 0.6,
    "aug.color_jitter": 0.0,  # the nulls: no effect and in no interaction
    "aug.grayscale": 0.0,
    "aug.blur": 0.0,
    "aug.sharpness": 0.0,
    "aug.erasing": 1.0,
    "aug.randaugment": 1.5,
    "aug.augmix": 1.2,
    "aug.mixup": 1.5,
    "aug.cutmix": 1.5,
}
NULLS = ("aug.color_jitter", "aug.grayscale", "aug.blur", "aug.sharpness")
SUBSTITUTES = (("aug.mixup", "aug.cutmix"), ("aug.randaugment", "aug.augmix"))  # both on: only the larger
SYNERGY = (("aug.rrc", "aug.translate", 0.8),)  # both on: this many points more
SLOW = ("aug.mixup", "aug.cutmix", "aug.randaugment", "aug.erasing")


@dataclass(frozen=True)
class World:
    """The coefficients of g on the probit scale, in the study's toggle order."""

    toggles: tuple[str, ...]
    main: np.ndarray  # per toggle: g gains this when the toggle is on
    pairs: tuple[tuple[int, int, float], ...]  # (i, j, gain when both on)
    slow: np.ndarray  # per toggle: a slow starter?

    def quality(self, on: np.ndarray) -> np.ndarray:
        """g for configurations ``on`` (configs x toggles, 0/1)."""
        g = on @ self.main
        for i, j, c in self.pairs:
            g = g + c * on[:, i] * on[:, j]
        return g

    def rise(self, on: np.ndarray, epoch: int) -> np.ndarray:
        """Share of the way to its final accuracy a run has come at ``epoch`` (slow starters rise later)."""
        return 1 - np.exp(-epoch / (1.5 + 0.8 * (on @ self.slow)))


def world(toggles: Sequence[str], null: bool = False) -> World:
    sd = math.sqrt(TAU_BLOCK**2 + TAU_RUN**2 + TAU_FLIP**2 + TAU_IMAGE**2)
    slope = float(np.exp(-0.5 * (MU / sd) ** 2) / math.sqrt(2 * math.pi) / sd)  # d accuracy / d g
    c = {k: 0.0 if null else EFFECTS[k] / 100 / slope for k in toggles}
    pairs: list[tuple[int, int, float]] = []
    idx = {k: i for i, k in enumerate(toggles)}
    for a, b in SUBSTITUTES:  # both on gains max(a, b): take back the smaller
        pairs.append((idx[a], idx[b], -min(c[a], c[b])))
    for a, b, points in SYNERGY:
        pairs.append((idx[a], idx[b], 0.0 if null else points / 100 / slope))
    slow = np.array([k in SLOW and not null for k in toggles], dtype=float)
    return World(tuple(toggles), np.array([c[k] for k in toggles]), tuple(pairs), slow)


def truths(w: World, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact main effects over the full factorial: on this validation set, and on the image population."""
    k = len(w.toggles)
    on = np.array(list(itertools.product([0.0, 1.0], repeat=k)))
    g = w.quality(on)
    finish = w.rise(on, EPOCHS)
    noise = math.sqrt(TAU_BLOCK**2 + TAU_RUN**2 + TAU_FLIP**2 + TAU_CONFIG**2)
    grid = np.linspace(g.min() - 1e-9, g.max() + 1e-9, 4097)  # accuracy here is smooth in g: interpolate
    here = np.interp(g, grid, special.ndtr((images[None, :] + grid[:, None]) / noise).mean(axis=1))
    population = special.ndtr((MU + g) / math.sqrt(noise**2 + TAU_IMAGE**2))
    sign = on * 2 - 1
    return 2 * (finish * here) @ sign / len(on), 2 * (finish * population) @ sign / len(on)


def run_metric(
    w: World, on: np.ndarray, images: np.ndarray, block: float, config: np.ndarray, rng: np.random.Generator
) -> list[float]:
    """One run's validation accuracy per epoch: its final share right, reached along its curve.
    ``config``: per image, how this configuration suits it (the same for every run of it)."""
    g = float(w.quality(on[None, :])[0])
    right = images + config + g + block + rng.normal(0, TAU_RUN) + rng.normal(0, TAU_FLIP, len(images)) > 0
    epochs = np.arange(1, EPOCHS + 1)
    return list(float(right.mean()) * (1 - np.exp(-epochs / (1.5 + 0.8 * float(on @ w.slow)))))


def noise_sds(w: World, images: np.ndarray, rng: np.random.Generator, n: int = 1500) -> tuple[float, float]:
    """One run's sd within a block: between seeds of one configuration, and the part a configuration's
    own suit to these images adds (half the mean squared difference of two runs, averaged over random
    configurations)."""
    same, other = [], []
    for _ in range(n):
        on = rng.integers(0, 2, len(w.toggles)).astype(float)
        c1, c2 = (rng.normal(0, TAU_CONFIG, len(images)) for _ in range(2))
        first = run_metric(w, on, images, 0.0, c1, rng)[-1]
        same.append(first - run_metric(w, on, images, 0.0, c1, rng)[-1])
        other.append(first - run_metric(w, on, images, 0.0, c2, rng)[-1])
    seed = float(np.mean(np.square(same)) / 2)
    return math.sqrt(seed), math.sqrt(max(float(np.mean(np.square(other)) / 2) - seed, 0.0))


# ---- one repeat through sweeper's own code --------------------------------------------------------


def study(overrides: dict[str, Any], repeat: int) -> spec_lib.Study:
    """The shipped ablation-aug study, its design section overridden, named for this repeat."""
    doc = spec_lib.to_document(spec_lib.load("ablation-aug"))
    doc["design"] = {**doc["design"], **overrides}
    if "runs" in doc["design"] and doc["design"].get("kind") == "fractional":
        del doc["design"]["runs"]
    doc["name"] = f"sim-{repeat}"
    return spec_lib.parse(doc, Path("ablation-aug.yaml"))


def one_repeat(s: spec_lib.Study, w: World, images: np.ndarray, fail: float, seed: int) -> effects.Fit:
    """Queue the study's design in a fresh in-memory Optuna study, run every run, fit its effects."""
    assert s.design is not None
    rng = np.random.default_rng([seed, 1])
    shift = {b: rng.normal(0, TAU_BLOCK) for b in s.design.seeds()}
    suits: dict[bytes, np.ndarray] = {}
    st = loop.open_study(s, None, store=optuna.storages.InMemoryStorage())
    for _ in range(design_lib.enqueue(st, s.design, s.space, len(design_lib.runs(s.design, s.space)))):
        trial = st.ask()
        params = space_lib.suggest(trial, s.space)
        if rng.random() < fail:  # diverged or crashed: the run is lost to the design
            trial.set_user_attr("fail_reason", "simulated failure")
            st.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        on = np.array([float(params[k]) for k in w.toggles])
        key = on.tobytes()
        if key not in suits:
            suits[key] = rng.normal(0, TAU_CONFIG, len(images))
        curve = run_metric(w, on, images, shift[params["seed"]], suits[key], rng)
        for epoch, v in enumerate(curve, 1):
            trial.report(v, epoch)
        st.tell(trial, max(curve))
    return effects.fit(st.get_trials(deepcopy=False), s.design, s.space, s.metric, s.direction, len(images))


# ---- scoring --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Per (repeat, toggle) rows: truth here and in the population, the fit's estimate, interval, verdict."""

    rows: list[tuple[int, str, float, float, float, float, float, str]] = dataclasses.field(
        default_factory=list
    )
    se_ratio: list[float] = dataclasses.field(default_factory=list)  # the fit's SE of an effect / the true SE
    runs_used: list[int] = dataclasses.field(default_factory=list)

    def add(
        self, repeat: int, f: effects.Fit, here: np.ndarray, pop: np.ndarray, w: World, se: float
    ) -> None:
        got = {e.term: e for e in f.effects}
        for i, k in enumerate(w.toggles):
            e = got[k]
            self.rows.append((repeat, k, float(here[i]), float(pop[i]), e.estimate, e.low, e.high, e.verdict))
        self.se_ratio.append(float(np.mean([got[k].se for k in w.toggles])) / se)
        self.runs_used.append(f.runs)


def report(t: Tally, se: float, repeats: int, nulls: Sequence[str]) -> dict[str, Any]:
    """The figures the issue asks for, from the tally."""
    called = {"helps": 1, "hurts": -1}
    rows = t.rows
    big = [r for r in rows if abs(r[2]) >= 2 * se]
    wrong = sum(called.get(r[7], 0) == -np.sign(r[2]) for r in big)
    wrong_any = sum(called.get(r[7], 0) == -np.sign(r[2]) for r in rows if r[1] not in nulls)
    null_calls = {k: sum(r[7] in called for r in rows if r[1] == k) for k in nulls}
    fwer = len({r[0] for r in rows if r[1] in nulls and r[7] in called})
    two = [r for r in rows if 2 * se <= abs(r[2]) < 3 * se]
    three = [r for r in rows if abs(r[2]) >= 3 * se]

    def power(sel: list[Any]) -> float | None:
        return sum(called.get(r[7], 0) == np.sign(r[2]) for r in sel) / len(sel) if sel else None

    return {
        "repeats": repeats,
        "se": se,
        "wrong_sign_2se": [int(wrong), len(big)],
        "wrong_sign_any_real": int(wrong_any),
        "familywise_false_call_nulls": fwer / repeats,
        "false_calls_per_null": {k: v / repeats for k, v in null_calls.items()},
        "coverage_this_val_set": float(np.mean([r[5] <= r[2] <= r[6] for r in rows])),
        "coverage_population": float(np.mean([r[5] <= r[3] <= r[6] for r in rows])),
        "power_2_to_3_se": [power(two), len(two)],
        "power_3se_up": [power(three), len(three)],
        "se_fitted_over_true": float(np.mean(t.se_ratio)),
        "mean_runs_used": float(np.mean(t.runs_used)),
    }


@dataclass(frozen=True)
class Setup:
    """One simulation: how many repeats, the design overrides, the world."""

    repeats: int = 200
    design: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the study's section
    fail: float = 0.0  # chance that a run fails (lost to the design)
    n_val: int = 300  # validation images shared by every run of a repeat
    null: bool = False  # every toggle null: no effects, no interactions, no slow starts
    seed: int = 0
    noise_samples: int = 1500  # run pairs that measure the true sigma


def simulate(setup: Setup) -> dict[str, Any]:
    """Run the setup's repeats through sweeper's design and fit; the figures, as :func:`report` names them."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = study(setup.design, 0)
    assert s.design is not None
    w = world(s.design.dims, setup.null)
    rng = np.random.default_rng([setup.seed, 0])
    seed_sd, config_sd = noise_sds(w, rng.normal(MU, TAU_IMAGE, setup.n_val), rng, setup.noise_samples)
    planned = [p for _, p in design_lib.runs(s.design, s.space)]
    per_setting = len(planned) / len({tuple(p[k] for k in s.design.dims) for p in planned})
    se = 2 * math.sqrt((seed_sd**2 + per_setting * config_sd**2) / len(planned))
    t0, tally = time.monotonic(), Tally()
    for r in range(setup.repeats):
        images = np.random.default_rng([setup.seed, 2, r]).normal(MU, TAU_IMAGE, setup.n_val)
        here, pop = truths(w, images)
        f = one_repeat(study(setup.design, r), w, images, setup.fail, setup.seed * 100_000 + r)
        tally.add(r, f, here, pop, w, se)
    out = report(tally, se, setup.repeats, s.design.dims if setup.null else NULLS)
    out |= {"seconds": round(time.monotonic() - t0, 1), "sigma": math.sqrt(seed_sd**2 + config_sd**2)}
    out |= {"sigma_seed": seed_sd, "sigma_setting": config_sd}
    out["design"] = {**s.design.document(), "runs_total": len(planned)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="20 repeats: a smoke run")
    ap.add_argument("--design", default="{}", help="JSON overriding the study's design section")
    ap.add_argument("--multiplicity", choices=["holm", "bh"], default=None)
    ap.add_argument("--fail", type=float, default=0.0, help="chance that a run fails (lost to the design)")
    ap.add_argument("--n-val", type=int, default=300, help="validation images shared by every run")
    ap.add_argument(
        "--null", action="store_true", help="every toggle null: no effects, interactions, slow starts"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    overrides = json.loads(args.design) | ({"multiplicity": args.multiplicity} if args.multiplicity else {})
    setup = Setup(20 if args.quick else args.repeats, overrides, args.fail, args.n_val, args.null, args.seed)
    out = simulate(setup)
    print(json.dumps(out, indent=1) if args.json else "\n".join(lines(out, setup)))


def lines(o: dict[str, Any], setup: Setup) -> list[str]:
    d = o["design"]
    p2, n2 = o["power_2_to_3_se"]
    p3, n3 = o["power_3se_up"]
    nominal = {"holm": "familywise 5% (Holm)", "bh": "false discovery rate 5% (BH)"}.get(
        d.get("multiplicity", ""), "none: each toggle at 5%"
    )
    return [
        f"SIMULATED: {o['repeats']} repeats of {d['runs_total']} runs ({d['kind']}, "
        f"runs {d.get('runs', '-')}, repeats {d['repeats']}), {setup.n_val} shared validation images, "
        f"run failure {setup.fail:.0%}; {o['seconds']} s",
        f"sigma per run (within a block) {o['sigma']:.4f} (seed {o['sigma_seed']:.4f}, the setting's suit to "
        f"the shared images {o['sigma_setting']:.4f}); SE of an effect {o['se']:.4f}; "
        f"the fit's SE / true {o['se_fitted_over_true']:.2f}; "
        f"runs used per repeat {o['mean_runs_used']:.1f}",
        f"wrong-sign verdicts on effects >= 2 SE: {o['wrong_sign_2se'][0]} of {o['wrong_sign_2se'][1]} "
        f"(on any real effect: {o['wrong_sign_any_real']})",
        f"family-wise false calls on the {len(o['false_calls_per_null'])} null toggles: "
        f"{o['familywise_false_call_nulls']:.3f} of repeats (nominal: {nominal} over all 14 toggles); "
        "per null toggle: " + ", ".join(f"{k} {v:.3f}" for k, v in o["false_calls_per_null"].items()),
        f"95% interval coverage: {o['coverage_this_val_set']:.3f} of the effects on this validation set, "
        f"{o['coverage_population']:.3f} of the population effects",
        f"power (called in the true direction): {p2:.2f} on effects of 2-3 SE ({n2}), "
        f"{p3:.2f} on effects >= 3 SE ({n3})"
        if p2 is not None and p3 is not None
        else "power: no effects in range",
    ]


if __name__ == "__main__":
    main()
