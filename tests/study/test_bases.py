"""Study files that build on others (``base:``), the study folders, and ``--json`` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.study import spec as spec_lib
from tests.helpers.builders import write_study

ROOT = """
name: root
data: {{root: {root}}}
epochs: 7
sampler: {{name: random, seed: 0}}
fixed:
  {{backbone: test_resnet, img_size: 32, batch_size: 8, lr_head: 0.01, aug: {{hflip: true, vflip: true}}}}
space:
  lr_backbone: {{float: [1.0e-4, 1.0e-2], log: true}}
"""
MIDDLE = """
base: root
epochs: 5
fixed: {aug.vflip: false, weight_decay: 0.01}
space:
  lr_head: {float: [1.0e-3, 1.0e-1], log: true}
"""
LEAF = """
base: middle.yaml
name: leaf
fixed: {lr_backbone: 0.001}
"""


def write(tmp_path: Path, **files: str) -> None:
    for name, text in files.items():
        write_study(tmp_path / f"{name}.yaml", text)


def test_a_base_chain_merges_with_the_childs_keys_winning(tmp_path: Path, image_folder: Path) -> None:
    write(tmp_path, root=ROOT.format(root=image_folder), middle=MIDDLE, leaf=LEAF)
    s = spec_lib.load(str(tmp_path / "leaf.yaml"))
    assert s.name == "leaf" and s.epochs == 5 and s.data_root == str(image_folder)
    assert s.fixed["aug.vflip"] is False and s.fixed["aug.hflip"] is True  # nested and dotted: one key
    assert s.fixed["weight_decay"] == 0.01 and s.fixed["lr_backbone"] == 0.001
    assert "lr_head" not in s.fixed and "lr_head" in s.space  # searched by the middle, no longer fixed
    assert "lr_backbone" not in s.space  # pinned by the leaf
    assert s.bases == (str(tmp_path / "middle.yaml"), str(tmp_path / "root.yaml"))
    assert spec_lib.load(str(tmp_path / "middle.yaml")).name == "middle"  # a name is never inherited


def test_a_cycle_of_bases_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, a="base: b\nepochs: 2\n", b="base: a\nepochs: 3\n")
    with pytest.raises(SweeperError, match=r"bases form a cycle \(a -> b -> a\)"):
        spec_lib.load(str(tmp_path / "a.yaml"))


def test_a_missing_base_is_named(tmp_path: Path) -> None:
    write(tmp_path, a="base: nowhere\nepochs: 2\n")
    with pytest.raises(SweeperError, match=r"a.yaml: base: unknown study 'nowhere'"):
        spec_lib.load(str(tmp_path / "a.yaml"))


def test_shipped_studies_on_the_common_base_are_unchanged() -> None:
    s = spec_lib.load("lr-freeze")
    assert s.bases and s.bases[0].endswith("_finetune.yaml")
    assert s.fixed["backbone"] == "resnext50_32x4d.a1h_in1k" and s.max_params == 100_000_000
    assert "_finetune" not in [p.stem for p in spec_lib.available_studies()]  # a base is not a study to run


def test_a_local_studies_folder_adds_to_the_shipped_ones(monkeypatch, image_folder: Path) -> None:
    monkeypatch.delenv("SWEEPER_STUDIES_DIR")
    Path("studies").mkdir()
    Path("studies/mine.yaml").write_text(ROOT.format(root=image_folder).replace("name: root", "name: mine"))
    names = [p.stem for p in spec_lib.available_studies()]
    assert "mine" in names and "quickstart" in names
    assert spec_lib.load("quickstart").name == "quickstart"


@pytest.mark.slow
def test_check_and_show_print_json_that_matches_the_text(cli, tmp_path: Path, image_folder: Path) -> None:
    write(tmp_path, root=ROOT.format(root=image_folder), middle=MIDDLE, leaf=LEAF)
    r = cli("check", str(tmp_path / "leaf.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["study"]["fixed"]["lr_backbone"] == 0.001 and len(doc["bases"]) == 2
    text = cli("check", str(tmp_path / "leaf.yaml")).stdout
    assert "base: " in text and "lr_head: float [0.001, 0.1] log" in text

    study = tmp_path / "leaf.yaml"
    assert (
        cli("run-study", str(study), "--trials", "2", "--epochs", "1", "--set", "num_workers=0").returncode
        == 0
    )
    shown = json.loads(cli("show", str(study), "--json").stdout)
    text = cli("show", str(study)).stdout
    assert shown["counts"]["counted"] == 2 and shown["record"]["overrides"]["epochs"] == 1
    assert f"best trial {shown['best']['number']}: val_acc={shown['best']['value']:.4f}" in text
    assert [t["number"] for t in shown["top"]] == [
        int(line.split()[0]) for line in text.splitlines()[-len(shown["top"]) :]
    ]
    rows = json.loads(cli("studies", "--json").stdout)
    leaf = next(r for r in rows if r["study"] == "leaf")  # run from a path: listed from storage
    assert leaf["file"] is None and leaf["complete"] + leaf["pruned"] == 2


def test_export_best_round_trips_to_the_winning_config(tmp_path: Path, image_folder: Path) -> None:
    import dataclasses

    import optuna
    import yaml

    from sweeper.data import images as data_lib
    from sweeper.results import views
    from sweeper.store import record as record_lib
    from sweeper.store import stores

    write(tmp_path, root=ROOT.format(root=image_folder), middle=MIDDLE, leaf=LEAF)
    spec = spec_lib.load(str(tmp_path / "leaf.yaml"))
    st = optuna.create_study(study_name="leaf", storage=stores.storage(None), direction="maximize")
    record_lib.ensure(st, record_lib.StudyRecord.of(spec, data_lib.scan(spec.data_root), {}))
    configs = [spec.resolve({"lr_head": lr}) for lr in (0.002, 0.05)]
    for cfg, value in zip(configs, (0.9, 0.7), strict=True):
        attrs = {record_lib.CONFIG: record_lib.config_json(dataclasses.replace(cfg, seed=7))}
        st.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    exported = tmp_path / "best.yaml"
    src = record_lib.open_recorded("leaf", None)
    exported.write_text(yaml.safe_dump(views.best_document(src, record_lib.best_trial(src.study))))
    pinned = spec_lib.load(str(exported))
    assert pinned.name == "leaf-best" and pinned.space == {}
    assert pinned.resolve({}) == dataclasses.replace(configs[0], seed=7)
