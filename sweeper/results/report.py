"""The study report: one self-contained HTML file to look at instead of reading logs.

It holds Optuna's own plots (optimization history, parallel coordinates, parameter importances, slices,
intermediate values), the learning curves of the top trials (per-epoch metrics from their MLflow runs),
the ablation table of the boolean dimensions, the best trial's confusion matrix and worst classes (its
MLflow artifacts), and a table of every trial with its state and why it was pruned or failed.

plotly.js is inlined once and the confusion matrix is a data URI, so the file opens offline, from
an e-mail attachment or an MLflow artifact view alike. The same file is logged to the study's MLflow
experiment as the artifact ``report.html`` of the study's own run (the parent of its trial runs).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.results import ablation as ablation_lib
from sweeper.results import confirm, effects_table, provenance
from sweeper.results import effects as effects_lib
from sweeper.results.figures import best_artifacts, figures, learning_curves, run_id_of
from sweeper.store import record as record_lib
from sweeper.store.tracking import MlflowTracker
from sweeper.study import objectives
from sweeper.study.spec import Study

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from mlflow import MlflowClient

WORST_CLASSES = 10  # rows of the worst-classes table


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _table(
    table_id: str, head: list[str], rows: list[list[str]], row_classes: list[str] | None = None
) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def trial_rows(
    trials: list[FrozenTrial], spec: Study, n_val: int | None = None
) -> tuple[list[str], list[list[str]], list[str]]:
    """The trials table: one row per trial, with the reason it was pruned or failed, and beside an
    accuracy its binomial standard error on the validation set."""
    keys = list(spec.space)
    costs = [c for c, _ in spec.costs]
    head = [
        "trial",
        "state",
        spec.metric,
        *(["± SE (binomial)"] if _binomial(spec, n_val) else []),
        *costs,
        "best epoch",
        "epochs run",
        "seconds",
        "why pruned / failed",
        *keys,
        "MLflow run",
    ]
    rows, classes = [], []
    for t in sorted(trials, key=lambda t: t.number):
        why = t.user_attrs.get(record_lib.FAIL_REASON) or t.user_attrs.get(record_lib.PRUNE_REASON) or ""
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration is not None else ""
        v = record_lib.primary(t)
        value = f"{v:.4f}" if v is not None and t.state == TrialState.COMPLETE else ""
        measured = objectives.values(t, [m for m, _ in spec.objectives])
        epochs = str(max(record_lib.curve(t))) if record_lib.curve(t) else ""
        rows.append(
            [
                str(t.number),
                t.state.name,
                value,
                *([_se(v, n_val) if value else ""] if _binomial(spec, n_val) else []),
                *(objectives.fmt(measured[c]) if c in measured else "" for c in costs),
                _fmt(t.user_attrs.get(record_lib.BEST_EPOCH)),
                epochs,
                seconds,
                str(why),
                *(_fmt(t.params.get(k)) for k in keys),
                run_id_of(t),
            ]
        )
        classes.append(f"state-{t.state.name}")
    return head, rows, classes


def _n_val(study: optuna.Study) -> int | None:
    rec = record_lib.load(study)
    return None if rec is None else rec.data.get("images", {}).get("val")


def _binomial(spec: Study, n_val: int | None) -> bool:
    return spec.metric == "val_acc" and bool(n_val)


def _se(value: float | None, n_val: int | None) -> str:
    return "" if value is None or not n_val else f"{effects_lib.binomial_se(value, n_val):.4f}"


def _effects_section(fit: effects_lib.Fit) -> list[str]:
    parts = ["<h2>Effects of the designed options (fitted jointly)</h2>"]
    said = "".join(f"<li>{_e(line)}</li>" for line in effects_table.summary(fit))
    parts.append(f'<ul class="meta" id="effects-summary">{said}</ul>')
    if not fit.effects:
        return [*parts, '<p class="note">not enough complete design runs for a fit yet</p>']
    rows = [effects_table.row(e) for e in fit.effects]
    table = _table("effects", effects_table.head(fit), rows)
    for verdict in ("helps", "hurts"):
        table = table.replace(f"<td>{verdict}</td>", f'<td class="verdict-{verdict}">{verdict}</td>')
    return [*parts, table]


def ablation_rows(ab: ablation_lib.Ablation) -> tuple[list[str], list[list[str]]]:
    head = [
        "option",
        "trials on",
        "trials off",
        f"mean {ab.metric} on",
        f"mean {ab.metric} off",
        "effect (on - off)",
        f"{ablation_lib.LEVEL:.0%} interval",
        "verdict",
    ]
    rows = [
        [
            r.param,
            str(r.n_on),
            str(r.n_off),
            ablation_lib.fmt_value(r.mean_on),
            ablation_lib.fmt_value(r.mean_off),
            ablation_lib.fmt_value(r.effect, True),
            ablation_lib.interval_text(r),
            r.verdict,
        ]
        for r in ab.rows
    ]
    return head, rows


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1240px;
color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555} .note{color:#777;font-style:italic}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 8px;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
#trials td:nth-child(2),#trials td:nth-child(7),#trials th:nth-child(7){text-align:left}
#trials td:nth-child(7){max-width:360px}
tr.state-PRUNED{background:#fff8e1} tr.state-FAIL{background:#fdecea} tr.state-RUNNING{background:#e8f0fe}
.verdict-helps{color:#1b7f3b;font-weight:600} .verdict-hurts{color:#b3261e;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:22px} .best{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.best img{max-width:560px;border:1px solid #ddd}
"""


def render(spec: Study, study: optuna.Study, client: MlflowClient | None, top: int = 5) -> str:
    """The report as one HTML string (plotly.js inlined).

    ``client`` is an ``MlflowClient`` on the study's tracking store; with None (or runs missing from
    it) the curves come from Optuna's intermediate values and the confusion matrix is left out.
    """
    from plotly.offline import get_plotlyjs

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: record_lib.primary(t) or 0.0, reverse=spec.direction == "maximize")
    best = complete[0] if complete and spec.multi else confirm.sweep_best(study, spec.direction)
    bools = [k for k, d in spec.space.items() if d.kind == "bool"]
    n_val = _n_val(study)
    ab, section = None, None
    if spec.design is not None:  # a design: all toggles fitted jointly instead of marginal means
        fit = effects_lib.fit(trials, spec.design, spec.space, spec.metric, spec.direction, n_val)
        section = _effects_section(fit)
    elif bools:
        ab = ablation_lib.compute(trials, bools, spec.metric, spec.direction)
    parts = _header(spec, study, best, n_val) + (section or _ablation_section(ab))
    for div, title, fig in figures(study, spec, learning_curves(client, complete[:top], spec.metric), ab):
        if div != "plot-ablation":
            parts.append(f"<h2>{_e(title)}</h2>")
        parts.append(_plot(div, "" if div == "plot-ablation" else title, fig))
    parts += _best_section(client, best)
    head, rows, classes = trial_rows(trials, spec, n_val)
    parts.append(f"<h2>All {len(trials)} trials</h2>")
    parts.append(_table("trials", head, rows, classes))
    parts.append(
        f'<p class="meta">made by sweeper report from the Optuna study {_e(spec.name)} and its '
        "MLflow runs</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>sweeper report: {_e(spec.name)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _header(
    spec: Study, study: optuna.Study, best: FrozenTrial | None, n_val: int | None = None
) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    c = record_lib.counts(trials)
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<h1>Study {_e(spec.name)}</h1>", *_as_run(spec, study)]
    ran = max((max(record_lib.curve(t)) for t in trials if record_lib.curve(t)), default=0)
    budget = f"{spec.epochs} epochs per trial" + (
        f" in the study file, at most {ran} in these trials" if 0 < ran < spec.epochs else ""
    )
    goal = ", ".join(f"{d} {m}" for m, d in spec.objectives)
    parts.append(
        f'<p class="meta">{_e(goal)}; {budget}; '
        f"sampler {_e(spec.sampler.get('name'))}, pruner {_e(spec.pruner.get('name'))}; "
        f"report of {now}</p>"
    )
    cards = [
        ("complete", c["complete"]),
        ("pruned", c["pruned"]),
        ("failed", c["fail"]),
        ("running", c["running"]),
        (f"best {spec.metric}", f"{_v(best):.4f}{_pm(spec, _v(best), n_val)}" if best else "-"),
    ]
    if spec.multi:
        cards.append(("on the Pareto front", len({t.number for t in _front(trials, spec)})))
    conf = None if spec.multi else confirm.view(confirm.confirmation(study, spec.direction), spec.metric)
    if conf is not None and conf["winner"] is not None:
        w = conf["winner"]
        cards.append((f"confirmed winner: {w['label']}", f"{w['mean']:.4f}"))
    parts.append(
        '<div class="cards" id="counts">'
        + "".join(f'<div class="card" data-key="{_e(k)}"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in cards)
        + "</div>"
    )
    return parts + _winner(conf, best)


def _winner(conf: dict[str, Any] | None, best: FrozenTrial | None) -> list[str]:
    """The confirmed winner's headline (with how sure it is) when a confirmation ran, then the best
    single trial's params."""
    parts = [] if conf is None else [f'<p id="confirmed"><b>{_e(conf["headline"])}</b></p>']
    if best is not None:
        which = "Best single trial (one seed)" if conf and conf["winner"] else "Best trial"
        params = ", ".join(f"{k} = {_fmt(v)}" for k, v in sorted(best.params.items()))
        parts.append(
            f'<p id="best-params">{which} <b>{best.number}</b> '
            f"(epoch {_e(best.user_attrs.get(record_lib.BEST_EPOCH, '?'))}): {_e(params)}</p>"
        )
    return parts


def _as_run(spec: Study, study: optuna.Study) -> list[str]:
    """What ran (backbones, data, overrides), then the study file's description, marked as the file's."""
    a = provenance.of(spec, record_lib.load(study), study.get_trials(deepcopy=False))
    note = provenance.file_note(a)
    return [
        f'<p class="meta" id="as-run">{_e(provenance.summary(a))}</p>',
        *([f'<p class="meta" id="file-description">{_e(note)}</p>'] if note else []),
    ]


def _v(t: FrozenTrial) -> float:
    return record_lib.primary(t) or 0.0


def _front(trials: list[FrozenTrial], spec: Study) -> list[FrozenTrial]:
    return objectives.front([t for t in trials if not record_lib.borrowed(t)], spec.objectives)


def _pm(spec: Study, value: float | None, n_val: int | None) -> str:
    return f" ± {_se(value, n_val)}" if _binomial(spec, n_val) and value is not None else ""


def _ablation_section(ab: ablation_lib.Ablation | None) -> list[str]:
    parts = ["<h2>Ablation: which on/off option helps?</h2>"]
    if ab is None:
        return [*parts, '<p class="note">this study searches no boolean dimension</p>']
    parts.append(
        f'<p class="meta" id="ablation-summary">{_e(ablation_lib.summary(ab))}. Trials are read at '
        f"one common epoch so pruned and complete trials compare alike. {_e(ablation_lib.CAVEAT)}</p>"
    )
    head, rows = ablation_rows(ab)
    table = _table("ablation", head, rows)
    for verdict in ("helps", "hurts"):
        table = table.replace(f"<td>{verdict}</td>", f'<td class="verdict-{verdict}">{verdict}</td>')
    return [*parts, table]


def _best_section(client: MlflowClient | None, best: FrozenTrial | None) -> list[str]:
    parts = ["<h2>Best trial: confusion matrix and worst classes</h2>"]
    if best is None:
        return [*parts, '<p class="note">no complete trial yet</p>']
    art = best_artifacts(client, best)
    if art.note:
        parts.append(f'<p class="note">{_e(art.note)}</p>')
    parts.append('<div class="best">')
    if art.confusion_png:
        data = base64.b64encode(art.confusion_png).decode()
        parts.append(
            f'<img id="confusion" alt="confusion matrix of trial {best.number}" '
            f'src="data:image/png;base64,{data}">'
        )
    if art.per_class:
        keys = ("class", "accuracy", "support", "most_confused_with")
        rows = [[r.get(k, "") for k in keys] for r in art.per_class[:WORST_CLASSES]]
        parts.append(
            f"<div><p>The {len(rows)} worst classes of {len(art.per_class)} (validation, "
            f"best epoch)</p>"
            + _table("worst-classes", ["class", "accuracy", "support", "most confused with"], rows)
            + "</div>"
        )
    parts.append("</div>")
    return parts


def _plot(div: str, title: str, fig: str | go.Figure) -> str:
    if isinstance(fig, str):
        return f'<p class="note" id="{div}-note">{_e(fig)}</p>'
    fig.update_layout(margin={"t": 60, "l": 60, "r": 30, "b": 50})
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div, config={"displaylogo": False, "responsive": True}
    )


def log_report(tracker: MlflowTracker, spec: Study, path: Path) -> str:
    """Log ``path`` as ``report.html`` of the study's own MLflow run (the parent of its trials)."""
    run_id = tracker.study_run_id()
    with tempfile.TemporaryDirectory(prefix="sweeper-report-") as d:
        target = Path(d) / "report.html"
        target.write_bytes(path.read_bytes())
        tracker.client.log_artifact(run_id, str(target))
    tracker.client.set_tag(
        run_id, "report_updated", dt.datetime.now().astimezone().isoformat(timespec="seconds")
    )
    return run_id


def describe_run(tracker: MlflowTracker, spec: Study, study: optuna.Study) -> None:
    """Bring the study run's description and tags up to what its trials trained (a searched backbone is
    known only once trials ran)."""
    a = provenance.of(spec, record_lib.load(study), study.get_trials(deepcopy=False))
    tracker.describe_study(provenance.description(a), provenance.tags(a))


def write(spec: Study, study: optuna.Study, tracker: MlflowTracker, out: Path, top: int = 5) -> str:
    """Render the report to ``out`` and log it to MLflow; returns the MLflow run id holding it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" warnings: the report says so
    text = render(spec, study, tracker.client, top)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    describe_run(tracker, spec, study)
    return log_report(tracker, spec, out)
