"""The results a person looks at, end to end: live progress while a small real study runs, its HTML
report read back in a real headless Chromium, ``show --ablation``, and the MLflow UI from ``sweeper ui``.

One study is built per session (two ``run-study`` invocations: the first on a pseudo-terminal, the
second resuming it as CI would) and shared by the slow tests here. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeper.errors import SweeperError
from sweeper.results import ablation, report
from sweeper.study import spec as spec_lib
from sweeper.study.design import CONFIRM
from tests.helpers.builders import TINY, make_image_folder
from tests.helpers.chromium import Chromium, chromium_path
from tests.helpers.processes import REPO

ARTIFACTS = REPO / "test-artifacts"
STUDY = """\
name: results-e2e
description: Pretrained resnext50_32x4d on the reference 100-class dataset
data: {root: reference-data}
epochs: 3
sampler: {name: random, seed: 4}
pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 0}
fixed: {batch_size: 10, optimizer: adamw, lr_backbone: 3.0e-3, backbone: resnext50_32x4d, pretrained: true}
space:
  lr_head: {float: [1.0e-3, 1.0e-1], log: true}
  freeze_depth: {choice: [0, 1, 9]}   # test_resnet has 4 stages: 9 fails, with a one-line reason
  aug.hflip: {bool: true}
  aug.erasing: {bool: true}
"""
FIRST, TOTAL = 6, 12  # trials after the terminal run, then after the resumed CI run
RAN = [*TINY, "--set", "pretrained=false", "--data", "data"]  # not what the study file describes


@dataclass
class Built:
    dir: Path
    study_file: Path
    tty_output: str
    ci_output: str  # the resumed sweep's stderr: its progress
    ci_stdout: str  # its result
    report: Path
    report_stdout: str
    study_run_seen: set[str | None]  # the study run's status, polled while the resumed sweep ran
    resumed: tuple[float, float]  # when the resumed sweep started and ended (time.time())

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.dir / 'mlruns' / 'mlflow.db'}"

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="results-e2e", storage=f"sqlite:///{self.dir / 'sweeper.db'}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEPER_STORAGE", "CI")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def sweeper(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def sweeper_on_a_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    """Run sweeper with stdout and stderr on a 100x30 pseudo-terminal, as in an interactive shell."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args],
        cwd=cwd,
        env=_env(TERM="xterm-256color"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(600), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("results")
    make_image_folder(d / "data", n_train=10, n_val=5)
    study_file = d / "results-e2e.yaml"
    study_file.write_text(STUDY)
    rc, tty = sweeper_on_a_terminal(d, "run-study", str(study_file), "--trials", str(FIRST), *RAN)
    assert rc == 0, tty[-3000:]
    started = time.time()
    ci, seen = sweeper_watching_the_study_run(d, "run-study", str(study_file), "--trials", str(TOTAL), *RAN)
    ended = time.time()
    assert ci.returncode == 0, ci.stderr[-3000:]
    rep = sweeper(d, "report", str(study_file), "--out", "out/report.html")
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = d / "out" / "report.html"
    return Built(d, study_file, tty, ci.stderr, ci.stdout, report, rep.stdout, seen, (started, ended))


def sweeper_watching_the_study_run(
    cwd: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str | None]]:
    """Run sweeper as CI would, polling the study run's status in the MLflow store while it runs."""
    out, err = cwd / "ci.out", cwd / "ci.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", *args],
            cwd=cwd,
            env=_env(CI="true", SWEEPER_PROGRESS_S="0.2"),
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        seen = set()
        while proc.poll() is None:
            seen.add(study_run_status(cwd / "mlruns" / "mlflow.db"))
            time.sleep(0.5)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
    return done, seen


def study_run_status(db: Path) -> str | None:
    """The study run's status as the store holds it (sqlite3: no MLflow client for each look)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            row = con.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'sweeper.kind' AND t.value = 'study'"
            ).fetchone()
    except sqlite3.Error:  # written at this moment
        return None
    return None if row is None else str(row[0])


# ---- live progress -----------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_is_a_live_bar_on_a_terminal(built: Built) -> None:
    out = built.tty_output
    assert "\x1b[" in out  # rich drew (and redrew) the live display
    assert f"trial {FIRST}/{FIRST}" in out and "eta " in out
    assert re.search(r"#\d+ epoch [1-3]/3(: batch \d+/\d+, [^|]+)? \| val_acc \d\.\d{4}", out)
    assert re.search(r"best val_acc (-|\d\.\d{4}) \| \d+ pruned, \d+ failed", out)
    for n in range(FIRST):
        assert re.search(rf"trial {n}: (COMPLETE|PRUNED|FAIL)", out)
    assert "done in" in out and f"{FIRST}/{FIRST} trials" in out


@pytest.mark.slow
def test_progress_is_plain_lines_in_ci_and_counts_the_resumed_trials(built: Built) -> None:
    out = built.ci_output  # stderr, every SWEEPER_PROGRESS_S (0.2 s here) seconds
    assert "\x1b[" not in out
    sweeps = re.findall(
        r"^progress \d:\d\d:\d\d \| (\d+)/12 trials done \| best val_acc (\S+) \| "
        r"(\d+) pruned, (\d+) failed \| elapsed \d:\d\d:\d\d, eta (\S+)$",
        out,
        re.M,
    )
    assert sweeps and int(sweeps[0][0]) == FIRST  # the resumed run starts with the 6 trials of the first
    assert sweeps[0][1] != "-"  # the first run left a best value
    running = re.findall(r"^progress \d:\d\d:\d\d \|   #(\d+) (.*)$", out, re.M)
    assert running  # the running trials, inside their epochs
    line = re.compile(
        r"starting|(cache build|decode check): \d+/\d+ images, .*|epoch [1-3]/3(: batch \d+/\d+, \S+ img/s"
        r"(, loss \d+\.\d{4})?, eta \S+)?( \| val_acc \d\.\d{4})?"
    )
    assert not [what for _, what in running if not line.fullmatch(what)]
    ends = re.findall(
        r"^trial (\d+): (COMPLETE|PRUNED|FAIL).* \| (\d+)/12 done, best \S+ \| (\d+) pruned, (\d+) failed",
        out,
        re.M,
    )
    done = [int(e[2]) for e in ends]
    assert [int(e[2]) for e in ends if e[1] != "FAIL"] == list(range(FIRST + 1, TOTAL + 1))
    assert all(b >= a for a, b in zip(done, done[1:], strict=False))  # a failed trial does not count
    trials = built.study().get_trials()
    last = ends[-1]
    assert int(last[3]) == sum(t.state == TrialState.PRUNED for t in trials)
    assert int(last[4]) == sum(t.state == TrialState.FAIL for t in trials)


@pytest.mark.slow
def test_the_study_run_is_running_while_its_sweep_is_and_closed_when_it_ends(built: Built) -> None:
    from mlflow import MlflowClient

    assert "RUNNING" in built.study_run_seen  # seen in the store while the resumed sweep ran
    client = MlflowClient(built.tracking_uri)
    exp = client.get_experiment_by_name("results-e2e")
    (run,) = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'study'")
    started, ended = (t * 1000 for t in built.resumed)
    assert run.info.status == "FINISHED"
    assert ended - 15_000 < run.info.end_time <= ended  # closed as the sweep ended (not at its start)
    assert run.info.start_time < started  # and made by the first sweep: it spans both
    assert not [k for k in run.data.tags if k.startswith("sweeper.sweeping.")]  # no sweep holds it
    assert f"compare trials in the MLflow UI: sweeper ui {built.study_file}" in built.ci_stdout
    assert built.study().metric_names == ["val_acc"]


# ---- the report in a browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(built: Built):
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with Chromium(width=1280, height=900) as browser:
        browser.open(built.report.as_uri())
        ready = browser.wait_for(
            "[...document.querySelectorAll('.js-plotly-plot')]"
            ".every(g => g._fullLayout && g.querySelector('.main-svg'))"
        )
        assert ready, "plotly did not draw every plot"
        browser.screenshot(ARTIFACTS / "report.png")
        yield browser


def plots(page: Chromium) -> dict[str, list[dict]]:
    """Each plot's traces as plotly holds them in the page (what is drawn, not what was sent)."""
    return page.eval("""Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(g => [g.id,
        g._fullData.map(t => ({name: t.name, type: t.type, x: t.x ? Array.from(t.x) : null,
                               y: t.y ? Array.from(t.y) : null, meta: t.meta || null}))]))""")


def table(page: Chromium, table_id: str) -> list[list[str]]:
    return page.eval(
        f"[...document.querySelectorAll('#{table_id} tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )


@pytest.mark.slow
def test_report_opens_offline_with_every_plot_drawn(built: Built, page: Chromium) -> None:
    assert built.report.stat().st_size > 3_000_000  # plotly.js is inside
    assert (
        "on the study's run 'results-e2e'" in built.report_stdout and "opens offline" in built.report_stdout
    )
    schemes = {u.split(":", 1)[0] for u in page.requested_urls()}
    assert schemes <= {"file", "data"}, page.requested_urls()  # nothing fetched from a network
    drawn = plots(page)
    assert {
        "plot-history",
        "plot-curves",
        "plot-intermediate",
        "plot-parallel",
        "plot-importance",
        "plot-slice",
        "plot-ablation",
    } <= set(drawn)
    png = (ARTIFACTS / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


@pytest.mark.slow
def test_report_plots_hold_the_studys_data(built: Built, page: Chromium) -> None:
    study = built.study()
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    drawn = plots(page)

    history = {t["name"]: t for t in drawn["plot-history"]}["val_acc"]
    assert history["x"] == [t.number for t in complete]
    assert history["y"] == pytest.approx([t.value for t in complete])

    parallel = page.eval("document.getElementById('plot-parallel')._fullLayout.xaxis.ticktext")
    assert set(parallel) == {"val_acc", "lr_head", "freeze_depth", "aug.hflip", "aug.erasing"}
    importance = drawn["plot-importance"][0]
    assert importance["type"] == "bar" and set(importance["y"]) <= set(parallel) - {"val_acc"}
    intermediate = [t for t in drawn["plot-intermediate"] if t["name"] and t["name"].startswith("Trial")]
    assert len(intermediate) == sum(bool(t.intermediate_values) for t in study.trials)

    # learning curves: the top trials' per-epoch metrics as logged in their MLflow runs
    from mlflow import MlflowClient

    client = MlflowClient(built.tracking_uri)
    top = sorted(complete, key=lambda t: -t.value)[:5]
    curves = [t for t in drawn["plot-curves"] if t["meta"]]
    assert sorted({c["meta"]["trial"] for c in curves}) == sorted(t.number for t in top)
    for c in curves:
        trial = study.trials[c["meta"]["trial"]]
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], c["meta"]["key"])
        assert c["x"] == [m.step for m in history] and c["y"] == pytest.approx([m.value for m in history])
        if c["meta"]["key"] == "val_acc":
            assert max(c["y"]) == pytest.approx(trial.value)


@pytest.mark.slow
def test_report_trial_table_says_why_trials_were_pruned_or_failed(built: Built, page: Chromium) -> None:
    study = built.study()
    head = page.eval("[...document.querySelectorAll('#trials thead th')].map(c => c.textContent)")
    rows = {int(r[0]): dict(zip(head, r, strict=True)) for r in table(page, "trials")}
    assert sorted(rows) == [t.number for t in study.trials]
    states = {t.state for t in study.trials}
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL} <= states  # the study has all three
    for t in study.trials:
        row = rows[t.number]
        assert row["state"] == t.state.name
        assert row["MLflow run"] == t.user_attrs["mlflow_run_id"]
        assert row["freeze_depth"] == str(t.params["freeze_depth"])
        if t.state == TrialState.PRUNED:
            assert row["why pruned / failed"] == t.user_attrs["prune_reason"]
            assert row["why pruned / failed"].startswith("pruned after epoch")
        elif t.state == TrialState.FAIL:
            assert row["why pruned / failed"] == t.user_attrs["fail_reason"]
            assert "freeze_depth=9" in row["why pruned / failed"]
        else:
            assert float(row["val_acc"]) == pytest.approx(t.value, abs=5e-5)
            assert row["best epoch"] == str(t.user_attrs["best_epoch"])
    classes = page.eval("[...document.querySelectorAll('#trials tbody tr')].map(r => r.className)")
    assert classes.count("state-FAIL") == sum(t.state == TrialState.FAIL for t in study.trials)


@pytest.mark.slow
def test_report_ablation_rows_match_the_trials(built: Built, page: Chromium) -> None:
    study = built.study()
    rows = table(page, "ablation")
    assert sorted(r[0] for r in rows) == ["aug.erasing", "aug.hflip"]
    effects = [float(r[5]) for r in rows if r[5] != "-"]
    assert effects == sorted(effects, reverse=True)  # most helpful first
    ab = ablation.compute(study.trials, ["aug.hflip", "aug.erasing"], "val_acc", "maximize")
    summary = page.eval("document.getElementById('ablation-summary').textContent")
    assert f"val_acc at epoch {ab.epoch}" in summary
    for row in rows:
        # recompute the row by hand from the trials: each read at the common epoch, best-so-far
        on, off = [], []
        for t in study.trials:
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and ab.epoch in t.intermediate_values:
                v = max(v for s, v in t.intermediate_values.items() if s <= ab.epoch)
                (on if t.params[row[0]] else off).append(v)
        assert (int(row[1]), int(row[2])) == (len(on), len(off))
        if on and off:
            assert float(row[5]) == pytest.approx(sum(on) / len(on) - sum(off) / len(off), abs=1e-4)
    drawn = plots(page)["plot-ablation"][0]
    with_interval = [r for r in rows if r[6] != "-"]
    assert sorted(drawn["y"]) == sorted(r[0] for r in with_interval)


@pytest.mark.slow
def test_report_shows_the_best_trials_confusion_matrix_and_worst_classes(
    built: Built, page: Chromium
) -> None:
    study = built.study()
    best = study.best_trial
    assert page.eval("document.getElementById('best-params').textContent").startswith(
        f"Best trial {best.number}"
    )
    size = page.eval(
        "[document.getElementById('confusion').naturalWidth, "
        "document.getElementById('confusion').naturalHeight]"
    )
    assert size[0] > 100 and size[1] > 100  # the PNG decoded
    from mlflow import MlflowClient

    csv_path = MlflowClient(built.tracking_uri).download_artifacts(
        best.user_attrs["mlflow_run_id"], "per_class_accuracy.csv", str(built.dir)
    )
    expected = [line.split(",") for line in Path(csv_path).read_text().splitlines()[1:]]
    assert table(page, "worst-classes") == expected  # worst first, as the run logged it


@pytest.mark.slow
def test_report_is_logged_to_the_studys_mlflow_experiment(built: Built) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(built.tracking_uri)
    exp = client.get_experiment_by_name("results-e2e")
    runs = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'study'")
    assert len(runs) == 1 and runs[0].info.run_name == "results-e2e"  # the study's own run holds it
    logged = client.download_artifacts(runs[0].info.run_id, "report.html", str(built.dir / "dl"))
    assert Path(logged).read_bytes() == built.report.read_bytes()
    again = sweeper(built.dir, "report", str(built.study_file), "--out", str(built.dir / "again.html"))
    assert again.returncode == 0, again.stderr
    assert len(client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'study'")) == 1  # reused
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'")
    linked = [t for t in built.study().trials if "mlflow_run_id" in t.user_attrs]  # surplus trials have none
    assert {r.data.tags["sweeper.kind"] for r in children} == {"trial"} and len(children) == len(linked)


@pytest.mark.slow
def test_show_the_report_and_the_mlflow_study_run_say_what_ran_not_what_the_file_says(built: Built) -> None:
    from mlflow import MlflowClient

    flags = (
        "--set backbone=test_resnet --set img_size=32 --set num_workers=0 --set pretrained=false --data data"
    )
    trained = sum("config" in t.user_attrs for t in built.study().trials)  # surplus trials never start
    ran = f"As run: test_resnet, not pretrained ({trained} trials); data data (3 classes, 30 train / 15 val"
    file_note = (
        "The study file's description (the file's words; the overrides above change what ran): "
        '"Pretrained resnext50_32x4d on the reference 100-class dataset"'
    )
    shown = sweeper(built.dir, "show", str(built.study_file))
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    said = next(line for line in lines if line.startswith("As run:"))
    assert said.startswith(ran) and said.endswith(f"the command line changed the study file: {flags}.")
    assert lines[lines.index(said) + 1] == file_note
    page = built.report.read_text()
    assert f'<p class="meta" id="as-run">{ran}' in page and "resnext50_32x4d" not in page.replace(
        html_escape(file_note), ""
    )
    client = MlflowClient(built.tracking_uri)
    exp = client.get_experiment_by_name("results-e2e")
    run = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'study'")[0]
    tags = run.data.tags
    assert tags["sweeper.backbones"] == "test_resnet" and tags["sweeper.pretrained"] == "false"
    assert tags["sweeper.overrides"] == flags and tags["sweeper.data"] == "data"  # as recorded
    for note in (tags["mlflow.note.content"], exp.tags["mlflow.note.content"]):
        assert note.startswith(ran) and note.endswith(file_note)


# ---- show --ablation ---------------------------------------------------------------------------


@pytest.mark.slow
def test_show_ablation_prints_the_table(built: Built) -> None:
    res = sweeper(built.dir, "show", str(built.study_file), "--ablation")
    assert res.returncode == 0, res.stderr
    ab = ablation.compute(built.study().trials, ["aug.hflip", "aug.erasing"], "val_acc", "maximize")
    lines = res.stdout.splitlines()
    assert ablation.summary(ab) in lines
    table_lines = lines[lines.index(ablation.summary(ab)) + 2 :]
    assert table_lines[0].split()[:3] == ["param", "on", "off"]
    rows, after = table_lines[1 : 1 + len(ab.rows)], table_lines[1 + len(ab.rows) :]
    assert [line.split()[0] for line in rows] == [r.param for r in ab.rows]
    assert after[:1] in ([], [""])  # then, after a blank line, what the table cannot say


def test_show_ablation_without_boolean_dimensions_is_a_one_line_error(tmp_path: Path) -> None:
    from sweeper.cli import reading
    from sweeper.study import spec as spec_lib

    plain = tmp_path / "no-bools.yaml"
    plain.write_text(STUDY.replace("  aug.hflip: {bool: true}\n  aug.erasing: {bool: true}\n", ""))
    with pytest.raises(SweeperError, match="searches no boolean dimension") as e:
        reading._ablation(spec_lib.load(str(plain)), None)
    assert "\n" not in str(e.value)


# ---- sweeper ui --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_ui_serves_the_studys_experiment_and_stops_cleanly(built: Built) -> None:
    port = _free_port()
    log, server_log = built.dir / "ui.out", built.dir / "ui.err"
    with open(log, "w") as out, open(server_log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "ui", str(built.study_file), "--port", str(port)],
            cwd=built.dir,
            env=_env(),
            stdout=out,
            stderr=err,  # the server's own lines
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 150
        while "experiment" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        lines = log.read_text().splitlines()
        base = f"http://127.0.0.1:{port}"
        assert lines[0] == f"MLflow UI: {base}", lines
        exp = _api(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=results-e2e")["experiment"]
        exp_id = exp["experiment_id"]
        page = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=sweeper"
        assert lines[1] == f"experiment 'results-e2e': {page}"
        runs = _api(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})
        by_name = {r["info"]["run_name"]: r["info"] for r in runs["runs"]}
        study = built.study()
        status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}  # pruned: no red cross
        for t in study.trials:
            assert by_name[f"trial-{t.number:04d}"]["status"] == status[t.state.name]
        assert "results-e2e" in by_name  # the study's own run, parent of the trial runs
        assert "/api/2.0/mlflow/" not in server_log.read_text()  # no line per request without --verbose

        # pointed at a tracking server, ui starts nothing and prints that server's pages
        direct = sweeper(built.dir, "ui", str(built.study_file), "--tracking-uri", base)
        assert direct.returncode == 0, direct.stderr
        assert direct.stdout.splitlines()[:2] == [f"MLflow UI: {base}", lines[1]]

        if chromium_path() is not None:  # the UI itself, as a person would open it
            with Chromium(width=1400, height=1600) as browser:
                _the_printed_page_compares_trials(browser, page, study)
                _the_plain_runs_page_offers_the_view(browser, f"{base}/#/experiments/{exp_id}/runs")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not _processes_with(f"--port {port}")  # the server and its workers are gone


def _the_printed_page_compares_trials(browser: Chromium, page: str, study: optuna.Study) -> None:
    """Model training, not GenAI; val_acc and the searched params as columns; pruned trials wear the
    complete trials' mark, not the failed ones' red cross; the study run lasted as long as its sweeps."""
    browser.open(page)
    shown = browser.wait_for(
        "!!document.querySelector('[role=columnheader][col-id=\"metrics.`val_acc`\"]')", 90
    )
    browser.screenshot(ARTIFACTS / "mlflow-ui.png")
    assert shown, "the MLflow UI shows no val_acc column"
    columns = browser.eval(
        "[...document.querySelectorAll('[role=columnheader]')].map(c => c.getAttribute('col-id'))"
    )
    for param in ("lr_head", "freeze_depth", "aug.hflip", "aug.erasing"):
        assert f"params.`{param}`" in columns
    text = browser.eval("document.body.innerText")
    assert "Model registry" in text and "Agent versions" not in text  # the model-training navigation
    rows = browser.eval(ROWS)
    colors = {
        state: {rows[f"trial-{t.number:04d}"]["color"] for t in study.trials if t.state.name == state}
        for state in ("COMPLETE", "PRUNED", "FAIL")
    }
    assert colors["PRUNED"] == colors["COMPLETE"] and len(colors["COMPLETE"]) == 1, colors
    assert not colors["FAIL"] & colors["COMPLETE"], colors  # failures still stand out
    duration = rows["results-e2e"]["duration"]  # the study run: both sweeps, not the 135 ms of old
    assert duration.endswith(("s", "min", "h")) and not duration.endswith("ms"), rows["results-e2e"]


ROWS = """(() => {  // run name -> its status icon's colour and its duration; ag-grid splits a row in parts
  const out = {};
  for (const r of document.querySelectorAll('.ag-row')) {
    const o = out[r.getAttribute('row-id')] ||= {};
    const name = r.querySelector('a[href*="/runs/"]');
    if (name) o.name = name.textContent;
    const icon = r.querySelector('[col-id=runDateAndNestInfo] .anticon');
    if (icon) o.color = getComputedStyle(icon).color;
    const duration = r.querySelector('[col-id=duration]');
    if (duration) o.duration = duration.textContent;
  }
  return Object.fromEntries(Object.values(out).map(o => [o.name, o]));
})()"""


def _the_plain_runs_page_offers_the_view(browser: Chromium, plain: str) -> None:
    """The runs page as MLflow's own links open it lists sweeper's view in its Views menu."""
    browser.open("about:blank")
    browser.open(plain)
    trigger = "document.querySelector('[data-testid=saved-views-trigger]')"
    assert browser.wait_for(f"!!{trigger}", 90), "no Views menu on the plain runs page"
    browser.eval(
        f"{trigger}.dispatchEvent(new PointerEvent('pointerdown', "
        "{bubbles: true, button: 0, pointerType: 'mouse'}))"
    )
    listed = browser.wait_for("document.body.innerText.includes('sweeper: val_acc and searched params')", 30)
    browser.screenshot(ARTIFACTS / "mlflow-ui-plain.png")
    assert listed, "the plain runs page does not offer sweeper's view"


def _processes_with(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "mlflow" in args:
            found.append(args)
    return found


@pytest.mark.slow
def test_ui_for_a_study_that_never_ran_is_a_one_line_error(built: Built) -> None:
    other = built.dir / "results-e2f.yaml"
    other.write_text(STUDY.replace("name: results-e2e", "name: results-e2f"))
    res = sweeper(built.dir, "ui", str(other))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "no MLflow experiment 'results-e2f'" in res.stderr and "did you mean 'results-e2e'" in res.stderr


# ---- the report without MLflow: unit -----------------------------------------------------------


def _spec() -> spec_lib.Study:
    return spec_lib.parse(
        {
            "name": "unit",
            "data": "builtin:digits",
            "epochs": 2,
            "space": {"lr_head": {"float": [1e-3, 1e-1], "log": True}, "aug.cutmix": {"bool": True}},
        },
        Path("unit.yaml"),
    )


def test_report_without_complete_trials_or_mlflow_says_so_and_escapes_reasons() -> None:
    study = optuna.create_study(direction="maximize")
    dists = {
        "lr_head": FloatDistribution(1e-3, 1e-1, log=True),
        "aug.cutmix": CategoricalDistribution([False, True]),
    }
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            value=0.1,
            params={"lr_head": 0.01, "aug.cutmix": True},
            distributions=dists,
            intermediate_values={1: 0.1},
            user_attrs={"prune_reason": "pruned after epoch 1: val_acc=0.1000"},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"lr_head": 0.02, "aug.cutmix": False},
            distributions=dists,
            user_attrs={"fail_reason": "ValueError: <script>x</script>"},
        )
    )
    text = report.render(_spec(), study, client=None)
    assert "&lt;script&gt;x&lt;/script&gt;" in text and "<script>x</script>" not in text
    assert 'id="plot-history-note">needs at least one complete trial' in text
    assert 'id="plot-curves-note">needs at least one complete trial' in text
    assert 'id="plot-intermediate"' in text  # the pruned trial reported an epoch
    assert "no complete trial yet" in text
    assert text.count('<tr class="state-') == 2


def test_the_report_headlines_the_confirmed_winner_over_the_best_single_trial() -> None:
    study = optuna.create_study(direction="maximize")
    lr = FloatDistribution(1e-3, 1e-1, log=True)
    seed = IntDistribution(0, 2**32 - 1)
    for value, rate in ((0.95, 0.01), (0.90, 0.02)):
        study.add_trial(create_trial(value=value, params={"lr_head": rate}, distributions={"lr_head": lr}))
    for origin, rate, values in ((0, 0.01, (0.80, 0.82)), (1, 0.02, (0.88, 0.90))):
        for s, v in zip((1000, 1001), values, strict=True):
            study.add_trial(
                create_trial(
                    value=v,
                    params={"lr_head": rate, "seed": s},
                    distributions={"lr_head": lr, "seed": seed},
                    user_attrs={CONFIRM: origin},
                )
            )
    text = report.render(_spec(), study, client=None)
    assert (
        '<p id="confirmed"><b>confirmed winner: trial 1 (val_acc 0.8900, mean of 2 re-runs), ahead of the '
        "runner-up (trial 0) by 8.00 points; 90% lower bound +8.00 points" in text
    )
    assert '<p id="best-params">Best single trial (one seed) <b>0</b>' in text  # not a lucky re-run
    assert 'data-key="confirmed winner: trial 1"><b>0.8900</b>' in text
