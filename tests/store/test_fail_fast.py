"""Stores that cannot work fail at once, in one line naming the URL (password masked), before any trial."""

from __future__ import annotations

import time

import pytest

from sweeper.errors import SweeperError
from sweeper.store import stores, tracking


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "http://127.0.0.1:9",
            r"the MLflow tracking store http://127.0.0.1:9 is not reachable .*Connection refused",
        ),
        (
            "postgresql://u:secret@127.0.0.1:9/db",
            r"postgresql\+psycopg://u:\*\*\*@127.0.0.1:9/db is not reachable",
        ),
        ("foo://bar", r"tracking URI 'foo://bar': unknown scheme 'foo'"),
    ],
)
def test_an_unusable_tracking_uri_is_one_line_within_seconds(uri: str, message: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(SweeperError, match=message) as e:
        tracking.MlflowTracker(uri, "x")
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value) and "secret" not in str(e.value)


@pytest.mark.parametrize("url", ["postgresql://u:secret@127.0.0.1:9/db", "foo://bar"])
def test_an_unusable_study_storage_is_one_line(url: str) -> None:
    with pytest.raises(SweeperError, match="cannot open study storage") as e:
        stores.storage(url)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)


def test_an_unwritable_checkpoint_folder_is_one_line_before_any_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from sweeper.cli import running

    monkeypatch.setenv("SWEEPER_CHECKPOINTS", "/proc/sweeper-cannot-write-here/checkpoints")  # even for root
    with pytest.raises(
        SweeperError, match=r"cannot write to /proc/sweeper-cannot-write-here/checkpoints: "
    ) as e:
        running._check_writable(None, None)
    assert "\n" not in str(e.value) and not Path("sweeper.db").exists()


def test_a_checkpoint_folder_under_a_file_is_one_line_and_nothing_is_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from sweeper.cli import running

    tmp_path = tmp_path / "here"  # its own folder: the test's working folder is beside it
    tmp_path.mkdir()
    (tmp_path / "notes").write_text("a file")
    monkeypatch.setenv("SWEEPER_CHECKPOINTS", str(tmp_path / "notes" / "checkpoints"))
    with pytest.raises(
        SweeperError, match=r"cannot write to .*notes/checkpoints: .*notes is a file, not a folder"
    ):
        running._check_writable(f"sqlite:///{tmp_path}/a/s.db", f"sqlite:///{tmp_path}/b/m.db")
    monkeypatch.setenv("SWEEPER_CHECKPOINTS", str(tmp_path / "deep" / "checkpoints"))
    running._check_writable(f"sqlite:///{tmp_path}/a/s.db", f"sqlite:///{tmp_path}/b/m.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # checked, not made


def test_one_sqlite_file_for_both_stores_is_one_line_before_anything_is_made(tmp_path) -> None:
    from sweeper.cli import running

    both = f"sqlite:///{tmp_path}/stores/both.db"
    with pytest.raises(SweeperError, match=r"--storage and --tracking-uri both name .*both.db") as e:
        running._check_writable(both, both)
    assert "\n" not in str(e.value) and not (tmp_path / "stores").exists()
