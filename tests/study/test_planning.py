"""What a design can tell before it runs: resolution, aliases, the smallest detectable effect."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sweeper.study import design, planning, spec

TOGGLES = ["aug.rrc", "aug.hflip", "aug.vflip", "aug.rotation", "aug.translate"]


def study(**design_args: object) -> spec.Study:
    raw = {
        "name": "p",
        "data": {"root": "builtin:digits"},
        "space": {k: {"bool": True} for k in TOGGLES},
        "design": design_args,
    }
    return spec.parse(raw, Path("p.yaml"))


def aliasing(s: spec.Study) -> planning.Aliasing:
    assert s.design is not None
    return planning.alias([p for _, p in design.runs(s.design, s.space)], s.space, s.design.dims)


def test_resolution_is_read_from_the_runs() -> None:
    assert aliasing(study(kind="balanced", runs=8)).resolution == 3  # a saturated 2^3: mains = interactions
    assert aliasing(study(kind="balanced", runs=12)).resolution == 3  # Plackett-Burman: partly, 1/3
    assert aliasing(study(kind="foldover")).resolution == 4
    assert aliasing(study(kind="fractional")).resolution == 5  # 16 runs for 5 toggles: V


def test_check_says_what_is_aliased_with_what_compactly() -> None:
    s = spec.load("ablation-aug")
    assert s.design is not None
    lines = planning.describe(s.design, s.space, None)
    assert lines[0].startswith("resolution IV: every main effect is clear of the others, of the blocks")
    assert "the 91 two-way interactions share 19 degrees of freedom, partly aliased" in lines[1]
    assert "--interactions estimates 0 of them" in lines[1]
    pb = planning.alias_lines(aliasing(study(kind="balanced", runs=12)))
    assert (
        pb[0].startswith("resolution III")
        and "each aliased with 6 two-way interactions (|r| up to 0.33)" in pb[1]
    )
    regular = planning.alias_lines(aliasing(study(kind="balanced", runs=8)))
    assert "(|r| up to 1.00), e.g. aug.rrc = aug.hflip x aug.translate" in regular[1]  # a saturated 2^3
    assert planning.alias_lines(aliasing(study(kind="fractional")))[1] == (
        "all 10 two-way interactions are estimable (--interactions fits them)"
    )


def test_the_smallest_detectable_effect_comes_from_the_validation_size_and_the_run_count() -> None:
    s = spec.load("ablation-aug")
    assert s.design is not None
    se, df, tests = planning.effect_se(s.design, s.space)
    assert se == pytest.approx(2 / 40**0.5) and df == 40 - 16 and tests == 14
    lines = planning.power_lines(s.design, s.space, 300)
    binom = (0.85 * 0.15 / 300) ** 0.5
    per, holm = planning.detectable(se * binom, df), planning.detectable(se * binom, df, 14)
    assert f"{per:.4f} per test and {holm:.4f} at Holm's strictest step, 5%/14" in lines[1]
    assert 0.025 < holm < 0.028 and 0.018 < per < 0.020  # about 2.7 and 1.9 points on 300 images
    bigger = dataclasses.replace(s.design, repeats=2)
    assert planning.effect_se(bigger, s.space)[0] == pytest.approx(2 / 80**0.5)
