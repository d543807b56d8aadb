"""Every backbone a study can sample is checked before the first trial; fetch-weights fills the hub cache."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import timm

from tests.helpers.builders import fake_hub_cache

pytestmark = pytest.mark.slow  # each drives the CLI in a subprocess

STUDY = """
name: three
data: {{root: {root}}}
epochs: 1
pruner: none
fixed: {{pretrained: true, img_size: 32, num_workers: 0, batch_size: 8}}
space:
  backbone: {{choice: [test_resnet.r160_in1k, test_efficientnet.r160_in1k, test_vit.r160_in1k]}}
"""


@pytest.fixture
def two_of_three_cached(tmp_path: Path) -> dict[str, str]:
    cache = tmp_path / "hub"
    for name in ("test_resnet", "test_efficientnet"):
        fake_hub_cache(cache, f"timm/{name}.r160_in1k", timm.create_model(name).state_dict())
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_a_missing_checkpoint_among_searched_backbones_stops_the_sweep_before_any_trial(
    cli, tmp_path: Path, image_folder: Path, two_of_three_cached: dict[str, str]
) -> None:
    study = tmp_path / "three.yaml"
    study.write_text(STUDY.format(root=image_folder))
    r = cli("run-study", str(study), "--trials", "3", env=two_of_three_cached)
    assert r.returncode == 2, r.stdout + r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: 1 problem before any trial: test_vit.r160_in1k: pretrained weights")
    assert "sweeper fetch-weights" in line and "test_resnet" not in line
    assert "three" not in optuna.get_all_study_names(f"sqlite:///{Path.cwd()}/sweeper.db")


def test_fetch_weights_reports_what_is_cached_and_what_it_could_not_fetch(
    cli, tmp_path: Path, image_folder: Path, two_of_three_cached: dict[str, str]
) -> None:
    study = tmp_path / "three.yaml"
    study.write_text(STUDY.format(root=image_folder))
    r = cli("fetch-weights", str(study), env=two_of_three_cached)
    assert r.returncode == 2
    assert "test_resnet.r160_in1k: already cached" in r.stdout
    assert "test_efficientnet.r160_in1k: already cached" in r.stdout
    assert (
        r.stderr.strip() == "error: 1 not fetched: test_vit.r160_in1k: not downloaded, HF_HUB_OFFLINE is set"
    )


def test_check_notes_a_backbone_over_the_budget(cli) -> None:
    r = cli("check", "backbone-scale")
    assert r.returncode == 0, r.stderr
    assert "note: resnext101_32x16d.fb_swsl_ig1b_ft_in1k: 192.0M parameters, over the budget" in r.stdout
