"""What a study ran as: the trials' backbones, the data and the overrides, before the file's own words."""

from __future__ import annotations

import json
from pathlib import Path

from optuna.trial import TrialState, create_trial

from sweeper.results import provenance
from sweeper.store import record
from sweeper.study import spec as spec_lib

FILE = {
    "name": "asrun",
    "description": "Pretrained resnext50_32x4d on the reference 100-class dataset",
    "data": {"root": "reference/"},
    "fixed": {"backbone": "resnext50_32x4d", "pretrained": True},
    "space": {"lr_head": {"float": [1.0e-3, 1.0e-1], "log": True}},
}
SETS = {"backbone": "resnet10t", "pretrained": False}


def recorded() -> tuple[spec_lib.Study, record.StudyRecord]:
    spec = spec_lib.parse(FILE, Path("asrun.yaml")).with_overrides(SETS, epochs=2, data_root="other/")
    rec = record.StudyRecord(
        document=spec_lib.to_document(spec),
        study_file="",
        path="asrun.yaml",
        overrides={"set": SETS, "epochs": 2, "data": "other/", "name": None},
        data={
            "root": "/data/other",
            "classes": ["a", "b", "c"],
            "images": {"train": 30, "val": 15, "test": 6},
        },
        versions={},
    )
    return spec, rec


def test_the_run_is_described_before_the_files_words_and_never_as_the_file_alone() -> None:
    spec, rec = recorded()
    cfg = json.dumps(spec.resolve({"lr_head": 1e-2}).flat(), default=str)
    trials = [create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={record.CONFIG: cfg})] * 2
    a = provenance.of(spec, rec, trials)
    assert provenance.summary(a) == (
        "As run: resnet10t, not pretrained (2 trials); data /data/other (3 classes, 30 train / 15 val / "
        "6 test images); the command line changed the study file: --set backbone=resnet10t "
        "--set pretrained=false --epochs 2 --data other/."
    )
    assert provenance.file_note(a) == (
        "The study file's description (the file's words; the overrides above change what ran): "
        '"Pretrained resnext50_32x4d on the reference 100-class dataset"'
    )
    assert provenance.tags(a) == {
        "sweeper.backbones": "resnet10t",
        "sweeper.pretrained": "false",
        "sweeper.data": "/data/other",
        "sweeper.overrides": "--set backbone=resnet10t --set pretrained=false --epochs 2 --data other/",
    }
    assert provenance.description(a).startswith(
        "As run: resnet10t"
    ) and "\n\nThe study file's" in provenance.description(a)


def test_before_any_trial_it_names_every_backbone_the_study_can_sample() -> None:
    doc = {
        **FILE,
        "space": {"backbone": {"choice": ["resnet10t", "resnet18"]}},
        "fixed": {"pretrained": False},
    }
    spec = spec_lib.parse(doc, Path("asrun.yaml"))
    a = provenance.of(spec, None, [])
    assert provenance.summary(a) == (
        "As run: resnet10t, not pretrained or resnet18, not pretrained (as the study defines it: no trial "
        "recorded its config yet); data reference/; "
        "no command-line overrides."
    )
    assert provenance.tags(a)["sweeper.backbones"] == "resnet10t, resnet18"
    assert (
        provenance.file_note(a)
        == 'The study file\'s description: "Pretrained resnext50_32x4d on the reference 100-class dataset"'
    )
