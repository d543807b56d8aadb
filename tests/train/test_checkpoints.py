"""sweeper.checkpoints: a checkpoint is resumed only when whole, of the same config and within its epochs."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sweeper.data import images as data_lib
from sweeper.sweep import workers
from sweeper.train import checkpoints
from tests.helpers.builders import trial_config


def save(path: Path, epoch: int = 1, **cfg: object) -> None:
    model = torch.nn.Linear(2, 2)
    run = SimpleNamespace(state_dict=lambda: {"model": model.state_dict()})  # a run's whole state
    result = SimpleNamespace(
        history=[{"val_acc": 0.5}] * epoch,
        best={"val_acc": 0.5},
        best_epoch=1,
        state_dict={},
        also_kept={},
        stopped_early=0,
        holdout_probs=None,
        confusion=None,
    )
    checkpoints.save(path, trial_config(**cfg), epoch, run, result)


def test_a_whole_checkpoint_is_resumed(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "trial-0000.pt"
    save(path)
    assert checkpoints.verify(path, trial_config()) == ""
    assert checkpoints.saved_state(path, trial_config()) == (1, [(1, {"val_acc": 0.5})])
    assert [p.name for p in path.parent.iterdir()] == ["trial-0000.pt"]  # no temporary file


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def claim_epoch(path: Path, epoch: int) -> None:
    head, _, payload = path.read_bytes().partition(b"\n")
    path.write_bytes(json.dumps({**json.loads(head), "epoch": epoch}).encode() + b"\n" + payload)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (flip_last_byte, "checksum mismatch (the file is damaged or truncated)"),
        (
            lambda p: p.write_bytes(p.read_bytes()[:-100]),
            "checksum mismatch (the file is damaged or truncated)",
        ),
        (lambda p: claim_epoch(p, 99), "claims epoch 99, outside the config's 1..2"),
        (lambda p: torch.save({"epoch": 1}, p), "not a sweeper checkpoint (unreadable header)"),
    ],
)
def test_a_bad_checkpoint_is_discarded_with_its_reason(tmp_path: Path, damage, reason: str) -> None:
    path = tmp_path / "trial-0000.pt"
    save(path)
    damage(path)
    assert checkpoints.verify(path, trial_config()) == reason
    assert not path.exists()  # the trial starts over
    assert checkpoints.saved_state(path, trial_config()) == (0, [])


def test_a_checkpoint_of_another_config_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "trial-0000.pt"
    save(path, lr_head=0.5)
    assert checkpoints.verify(path, trial_config(lr_head=0.01)) == "written for another config"
    save(path, micro_batch=4)  # how batches are split is not another config: an OOM retry resumes
    assert checkpoints.verify(path, trial_config()) == ""


def test_a_full_disk_is_one_clear_error_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt" / "trial-0000.pt"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=10_000))
    with pytest.raises(OSError, match=r"needs 0 MB, 0 MB free on its device") as e:
        save(path)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    monkeypatch.setenv("SWEEPER_FAULT", "checkpoint-write:enospc")  # the device fills up mid-write
    with pytest.raises(OSError, match="No space left"):
        save(path)
    assert list(path.parent.iterdir()) == []


@pytest.mark.slow
def test_a_damaged_checkpoint_makes_the_trial_start_over(tmp_path: Path, image_folder: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = tmp_path / "ckpt.pt"
    job = workers.Job(trial_config(), data_lib.scan(image_folder), "val_acc", out, path)
    save(path, epoch=2)
    flip_last_byte(path)
    discarded: list[str] = []

    trained = workers.train_in_process(job, workers.Listener(lambda e, m: None, discarded=discarded.append))
    assert discarded == ["checksum mismatch (the file is damaged or truncated)"]
    assert trained.resumed_from == 0 and trained.epochs == 2  # every epoch trained, none from the file


def test_a_save_survives_another_workers_trial_ending_beside_it(tmp_path: Path) -> None:
    """Workers share a study's checkpoint folder: one whose trial ends drops its checkpoint while another
    saves (CI lost a trial when the ending one also removed the folder it had just emptied)."""
    import threading

    from sweeper.sweep import trial as trial_lib

    folder, stop = tmp_path / "ckpt", threading.Event()

    def end_trials() -> None:  # the other worker, ending trials as fast as it can
        mine = folder / "trial-9999.pt"
        while not stop.is_set():
            with contextlib.suppress(OSError):
                mine.touch()
            trial_lib._drop(mine)

    other = threading.Thread(target=end_trials)
    other.start()
    try:
        for n in range(300):
            path = folder / f"trial-{n:04d}.pt"
            save(path)
            assert checkpoints.verify(path, trial_config()) == ""
            trial_lib._drop(path)
    finally:
        stop.set()
        other.join()
