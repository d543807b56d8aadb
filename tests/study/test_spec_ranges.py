"""Every numeric study value has its range: out-of-range and malformed values are one line naming the key."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.study import spec
from tests.helpers.builders import load_study


def study(fixed: str = "{}", space: str = "{}", top: str = "") -> str:
    return f"name: s\ndata: {{root: builtin:digits}}\nepochs: 5\nfixed: {fixed}\nspace: {space}\n{top}"


CASES = [
    # (study text, key path, the allowed range as the message states it)
    (study("{batch_size: 0}"), "fixed.batch_size", "must be >= 1, got 0"),
    (study("{img_size: -32}"), "fixed.img_size", "must be >= 8, got -32"),
    (study("{micro_batch: 0}"), "fixed.micro_batch", "must be >= 1, got 0"),
    (study("{epochs: 0}"), "fixed.epochs", "must be >= 1, got 0"),
    (study("{lr_head: -1}"), "fixed.lr_head", "must be > 0, got -1.0"),
    (study("{lr_backbone: 0}"), "fixed.lr_backbone", "must be > 0, got 0.0"),
    (study("{momentum: 7}"), "fixed.momentum", "must be in [0, 1), got 7.0"),
    (study("{weight_decay: -0.1}"), "fixed.weight_decay", "must be >= 0, got -0.1"),
    (study("{warmup_epochs: -1}"), "fixed.warmup_epochs", "must be >= 0, got -1.0"),
    (study("{layer_decay: 0}"), "fixed.layer_decay", "must be in (0, 1], got 0.0"),
    (study("{seed: -1}"), "fixed.seed", "must be in [0, 4294967295], got -1"),
    (study("{num_workers: -2}"), "fixed.num_workers", "must be >= 0, got -2"),
    (study("{aug: {hflip_p: 5}}"), "fixed.aug.hflip_p", "must be in [0, 1], got 5.0"),
    (study("{aug.blur_kernel: 4}"), "fixed.aug.blur_kernel", "must be odd, got 4"),
    (study("{aug.rrc_scale: [0.9, 0.2]}"), "fixed.aug.rrc_scale", "needs low <= high, got [0.9, 0.2]"),
    (study("{aug.rrc_scale: [0, 1]}"), "fixed.aug.rrc_scale", "must be in (0, 1], got 0.0"),
    (study("{aug.rrc_ratio: [-1, 2]}"), "fixed.aug.rrc_ratio", "must be > 0, got -1.0"),
    (study("{aug.hue: 0.7}"), "fixed.aug.hue", "must be in [0, 0.5], got 0.7"),
    (study("{aug.randaugment_m: 31}"), "fixed.aug.randaugment_m", "must be in [0, 30], got 31"),
    (study("{aug.augmix_severity: 0}"), "fixed.aug.augmix_severity", "must be in [1, 10], got 0"),
    (study("{aug.translate_frac: 2}"), "fixed.aug.translate_frac", "must be in [0, 1], got 2.0"),
    (study("{eval.crop_pct: 1.5}"), "fixed.eval.crop_pct", "must be in (0, 1], got 1.5"),
    (study("{sensitivity.lr: [1.0e-3, -1.0e-3]}"), "fixed.sensitivity.lr", "must be > 0, got -0.001"),
    (study(top="epochs: 0\n").replace("epochs: 5\n", ""), "epochs", "must be an integer >= 1, got 0"),
    (study(space="{batch_size: {int: [0, 64]}}"), "space.batch_size", "must be >= 1, got 0"),
    (study(space="{lr_head: {float: [-1e-3, 1e-2]}}"), "space.lr_head", "must be > 0, got -0.001"),
    (study(space="{aug.hflip_p: {float: [0.5, 1.5]}}"), "space.aug.hflip_p", "must be in [0, 1], got 1.5"),
    (study(space="{momentum: {choice: [0.9, 1.0]}}"), "space.momentum", "must be in [0, 1), got 1.0"),
    (study(space="{aug.blur_kernel: {int: [3, 7]}}"), "space.aug.blur_kernel", "must be odd, got 4"),
    (
        study(top="pruner: {name: hyperband, min_resource: 0}"),
        "pruner.min_resource",
        "integer >= 1 or 'auto'",
    ),
    (study(top="pruner: {name: hyperband, reduction_factor: 1}"), "pruner.reduction_factor", "integer >= 2"),
    (study(top="pruner: {name: median, n_startup_trials: -1}"), "pruner.n_startup_trials", "integer >= 0"),
    (study(top="pruner: {name: median, n_warmup_steps: -1}"), "pruner.n_warmup_steps", "integer >= 0"),
    (study(top="pruner: {name: percentile, percentile: 100}"), "pruner.percentile", "number in (0, 100)"),
    (study(top="sampler: {name: tpe, seed: abc}"), "sampler.seed", "integer in [0, 4294967295], got 'abc'"),
    (study(top="sampler: {name: tpe, seed: 1.5}"), "sampler.seed", "integer in [0, 4294967295], got 1.5"),
    (study().replace("builtin:digits}", "builtin:digits, max_pixels: 0}"), "data.max_pixels", "integer >= 1"),
    (study("{batch_size: 8, lr_head: 0.1, batch_size: 16}"), "line 4", "duplicate key 'batch_size'"),
    (study(top="fixed: {seed: 1}\n"), "line 6", "duplicate key 'fixed' (first on line 4)"),
]


@pytest.mark.parametrize(("text", "key", "allowed"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_out_of_range_values_name_key_value_and_range(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SweeperError) as e:
        spec.load(str(p))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}: {key}") and allowed in msg, msg


def test_every_numeric_parameter_has_a_range() -> None:
    def numeric(t: typing.Any) -> bool:
        args = typing.get_args(t)
        return t in (int, float) or any(numeric(a) for a in args if a is not Ellipsis)

    missing = [k for k, t in spec.PARAM_TYPES.items() if numeric(t) and k not in spec.LIMITS]
    assert missing == []


def test_set_values_go_through_the_same_checks(tmp_path: Path) -> None:
    s = load_study(tmp_path, study())
    with pytest.raises(SweeperError, match=r"^--set aug\.hflip_p=5: must be in \[0, 1\], got 5\.0$"):
        s.with_overrides({"aug.hflip_p": 5})
    assert s.with_overrides({"lr_head": "3e-3"}).fixed["lr_head"] == 0.003  # PyYAML's YAML 1.1 string


def test_exponents_without_a_dot_are_floats_and_in_range_values_pass(tmp_path: Path) -> None:
    s = load_study(
        tmp_path,
        study(
            "{lr_head: 3e-3, aug.blur_p: 1, momentum: 0, aug.rrc_scale: [0.5, 0.5], seed: 4294967295}",
            "{lr_backbone: {float: [1e-5, 1e-3], log: true}, aug.blur_kernel: {int: [3, 7], step: 2}}",
            "pruner: {name: hyperband, min_resource: auto, reduction_factor: 3}\n"
            "sampler: {name: tpe, seed: null}",
        ).replace("builtin:digits}", "builtin:digits, max_pixels: 1.0e9}"),
    )
    assert s.fixed["lr_head"] == 0.003 and s.space["lr_backbone"].low == 1e-5 and s.max_pixels == 10**9
    assert s.fixed["aug.rrc_scale"] == (0.5, 0.5) and s.pruner["min_resource"] == "auto"


def test_merge_keys_may_override(tmp_path: Path) -> None:
    assert load_study(tmp_path, study("{<<: {batch_size: 8}, batch_size: 16}")).fixed["batch_size"] == 16


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fixed.yaml"], "s.yaml: fixed.batch_size: must be >= 1, got 0"),
        (["ok.yaml", "--set", "aug.hflip_p=5"], "--set aug.hflip_p=5: must be in [0, 1], got 5.0"),
    ],
)
@pytest.mark.slow
def test_check_command_prints_one_line(cli, tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "fixed.yaml").write_text(study("{batch_size: 0}"))
    (tmp_path / "ok.yaml").write_text(study())
    args = [str(tmp_path / args[0]), *args[1:]]
    r = cli("check", *args)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert expected.replace("s.yaml", "fixed.yaml") in r.stderr


@pytest.mark.slow
def test_check_command_reads_the_readme_example(cli, tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(study("{lr_head: 3e-3}"))
    r = cli("check", str(tmp_path / "ok.yaml"), "--set", "lr_head=3e-3")
    assert r.returncode == 0, r.stderr
    assert "0.003" in r.stdout
