"""The study record: what defines a study, kept with it, checked on resume, read back by refit and show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from PIL import Image

from sweeper.data import images as data_lib
from sweeper.errors import SweeperError
from sweeper.store import record as record_lib
from sweeper.store import stores
from sweeper.study import space as space_lib
from sweeper.study import spec as spec_lib
from tests.helpers.builders import write_study

STUDY = """
name: rec
data: {{root: {root}}}
epochs: 4
sampler: {{name: random, seed: 0}}
fixed: {{backbone: test_resnet, img_size: 32, batch_size: 8, aug: {{rrc: false}}}}
space:
  lr_head: {{float: [1.0e-4, 1.0e-2], log: true}}
  aug.hflip: {{bool: true}}
"""


def study_file(tmp_path: Path, image_folder: Path, text: str = STUDY) -> Path:
    return write_study(tmp_path / "rec.yaml", text.format(root=image_folder))


def make_record(path: Path, **overrides: object) -> record_lib.StudyRecord:
    spec = spec_lib.load(str(path)).with_overrides(overrides.get("set"), overrides.get("epochs"))  # type: ignore[arg-type]
    return record_lib.StudyRecord.of(spec, data_lib.scan(spec.data_root), dict(overrides))


@pytest.mark.parametrize("name", [p.stem for p in spec_lib.available_studies()])
def test_every_shipped_study_round_trips_through_its_document(name: str) -> None:
    spec = spec_lib.load(name).with_overrides({"seed": 3}, 2)
    doc = json.loads(json.dumps(spec_lib.to_document(spec)))  # as stored: JSON
    assert spec_lib.parse(doc, spec.path) == spec


def test_a_trial_config_round_trips_through_json() -> None:
    cfg = spec_lib.load("recipe-004").resolve({})
    assert record_lib.trial_config(_trial_with(record_lib.config_json(cfg))) == cfg


def _trial_with(config: str, like: optuna.trial.FrozenTrial | None = None) -> optuna.trial.FrozenTrial:
    """A trial recording ``config``, with the params (and distributions) of ``like``."""
    params, dists = (like.params, like.distributions) if like is not None else ({}, {})
    return optuna.trial.create_trial(
        value=0.5, params=params, distributions=dists, user_attrs={record_lib.CONFIG: config}
    )


@pytest.mark.parametrize("name", ["ablation-aug", "lr-freeze", "recipe-000"])
def test_a_trial_keeps_a_compact_config_that_rebuilds_exactly(name: str) -> None:
    spec = spec_lib.load(name)
    sampler = optuna.samplers.RandomSampler(seed=0)
    st = optuna.create_study(directions=[d for _, d in spec.objectives], sampler=sampler)
    trial = st.ask()
    params = space_lib.suggest(trial, spec.space)
    st.tell(trial, [0.5] * len(spec.objectives))
    cfg = spec.resolve(params)
    stored = record_lib.config_json(cfg, params)
    whole = json.dumps(spec_lib.plain(cfg.flat()), sort_keys=True)
    assert len(stored) < 1000 < 2000 < len(whole)  # a short line on optuna-dashboard's trial page
    kept = json.loads(stored)
    assert not {k for k in kept if k in params and kept[k] == spec_lib.plain(params[k])}  # params hold them
    assert record_lib.trial_config(_trial_with(stored, st.trials[0])) == cfg
    assert record_lib.trial_config(_trial_with(whole, st.trials[0])) == cfg  # as an older sweeper kept it


def test_a_searched_value_the_config_changed_is_kept() -> None:
    spec = spec_lib.load("quickstart")
    cfg = spec.resolve({"lr_head": 0.01})
    st = optuna.create_study()
    st.enqueue_trial({"lr_head": 0.02})  # what Optuna holds differs from what trained (as a clamp makes it)
    trial = st.ask()
    trial.suggest_float("lr_head", 1e-3, 1e-1)
    st.tell(trial, 0.5)
    stored = record_lib.config_json(cfg, st.trials[0].params)
    assert json.loads(stored)["lr_head"] == 0.01
    assert record_lib.trial_config(_trial_with(stored, st.trials[0])) == cfg


def test_a_new_study_keeps_its_record_and_an_identical_rerun_passes(
    tmp_path: Path, image_folder: Path
) -> None:
    path = study_file(tmp_path, image_folder)
    rec = make_record(path, set={"lr_head": 0.02}, epochs=2)
    st = optuna.create_study(study_name="rec", storage=stores.storage(None))
    assert record_lib.ensure(st, rec) == rec
    again = optuna.load_study(study_name="rec", storage=stores.storage(None))
    stored = record_lib.load(again)
    assert stored is not None and stored.study_file == path.read_text()
    assert stored.overrides == {"set": {"lr_head": 0.02}, "epochs": 2}
    assert stored.data["classes"] == ["bird", "insect", "plant"] and stored.data["images"]["train"] == 30
    assert {"sweeper", "torch", "timm", "optuna", "mlflow"} <= set(stored.versions)
    assert stored.spec().fixed["lr_head"] == 0.02 and "lr_head" not in stored.spec().space
    assert record_lib.ensure(again, make_record(path, set={"lr_head": 0.02}, epochs=2)) is not None


def test_a_worker_starting_while_another_saves_the_record_never_reads_half_of_it(
    tmp_path: Path, image_folder: Path
) -> None:
    """The record's parts are separate writes; a worker that looks between two of them finds either no
    record (and saves the same one) or all of it, never a record without its data (refused as changed)."""
    path = study_file(tmp_path, image_folder)
    rec = make_record(path)
    st = optuna.create_study(study_name="half", storage=stores.storage(None))
    seen: list[object] = []
    original = optuna.Study.set_user_attr

    def look_after_each_write(self: optuna.Study, key: str, value: object) -> None:
        original(self, key, value)
        if self is not st:  # the other worker's own save
            return
        other = optuna.load_study(study_name="half", storage=stores.storage(None))
        seen.append(record_lib.ensure(other, make_record(path)))  # another worker, starting now

    optuna.Study.set_user_attr = look_after_each_write  # type: ignore[method-assign]
    try:
        record_lib.save(st, rec)
    finally:
        optuna.Study.set_user_attr = original  # type: ignore[method-assign]
    assert seen and all(s is not None for s in seen)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda t: t.replace("[1.0e-4, 1.0e-2]", "[1.0e-5, 1.0e-2]"), "space.lr_head"),
        (lambda t: t.replace("batch_size: 8", "batch_size: 16"), "fixed.batch_size"),
        (lambda t: t.replace("epochs: 4", "epochs: 5"), "epochs (4 -> 5)"),
        (lambda t: t.replace("  aug.hflip: {{bool: true}}\n", ""), "space.aug.hflip"),
    ],
)
def test_a_rerun_that_changes_what_a_trial_means_is_refused_naming_the_keys(
    tmp_path: Path, image_folder: Path, change, named: str
) -> None:
    path = study_file(tmp_path, image_folder)
    st = optuna.create_study(study_name="rec", storage=stores.storage(None))
    record_lib.ensure(st, make_record(path))
    changed = study_file(tmp_path, image_folder, change(STUDY))
    with pytest.raises(SweeperError, match="already ran with another definition") as e:
        record_lib.ensure(st, make_record(changed))
    assert named in str(e.value) and "--name" in str(e.value) and "\n" not in str(e.value)


def test_what_does_not_change_a_trial_is_free_and_moved_data_is_the_same_data(
    tmp_path: Path, image_folder: Path
) -> None:
    path = study_file(tmp_path, image_folder)
    st = optuna.create_study(study_name="rec", storage=stores.storage(None))
    record_lib.ensure(st, make_record(path))
    moved = shutil.copytree(image_folder, tmp_path / "elsewhere")
    other_sampler = STUDY.replace("seed: 0", "seed: 7").replace("{root}", str(moved))
    assert record_lib.ensure(st, make_record(study_file(tmp_path, image_folder, other_sampler))) is not None
    Image.new("RGB", (24, 24), "orange").save(moved / "train" / "bird" / "extra.png")  # a new image
    with pytest.raises(SweeperError, match=r"data.images .*data.digest"):
        record_lib.ensure(st, make_record(study_file(tmp_path, image_folder, other_sampler)))


def test_a_study_from_before_the_record_runs_on_unchecked(tmp_path: Path, image_folder: Path) -> None:
    st = optuna.create_study(study_name="rec", storage=stores.storage(None))
    st.add_trial(optuna.trial.create_trial(value=0.5))
    assert record_lib.ensure(st, make_record(study_file(tmp_path, image_folder))) is None
    assert record_lib.load(st) is None


def test_a_study_is_found_by_file_stem_or_stored_name(tmp_path: Path, image_folder: Path) -> None:
    path = study_file(tmp_path, image_folder)
    spec = spec_lib.load(str(path))
    renamed = spec_lib.parse(spec_lib.to_document(spec) | {"name": "rec-v2"}, path)
    ds = data_lib.scan(spec.data_root)
    for s in (spec, renamed):
        st = optuna.create_study(study_name=s.name, storage=stores.storage(None))
        record_lib.ensure(st, record_lib.StudyRecord.of(s, ds, {}))
    assert record_lib.open_recorded(str(path), None).spec.name == "rec"
    found = record_lib.open_recorded("rec-v2", None)  # no such file: the stored study
    assert found.spec == renamed and found.notes == []
    with pytest.raises(SweeperError, match="no study 'nope'"):
        record_lib.open_recorded("nope", None)


def test_refit_data_with_other_classes_is_refused(tmp_path: Path, image_folder: Path) -> None:
    rec = make_record(study_file(tmp_path, image_folder))
    record_lib.check_classes(rec, ("bird", "insect", "plant"), image_folder)
    with pytest.raises(SweeperError, match=r"other classes .*missing \['plant'\]; new \['tree'\]"):
        record_lib.check_classes(rec, ("bird", "insect", "tree"), tmp_path)
