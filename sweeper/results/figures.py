"""What the study report shows, gathered: learning curves and the best trial's artifacts from MLflow, and
the figures (Optuna's plots, the curves, the ablation) with a note in place of any that cannot be drawn."""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.results import ablation as ablation_lib
from sweeper.store import record as record_lib
from sweeper.study import objectives
from sweeper.study.spec import Study

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass
class Curves:
    """Per-epoch values of one trial: ``{metric name: [(epoch, value), ...]}`` and where they came from."""

    number: int
    value: float
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    source: str = "MLflow"


@dataclass
class BestArtifacts:
    """What the best trial's MLflow run left that a person wants to see."""

    confusion_png: bytes | None = None
    per_class: list[dict[str, str]] = field(default_factory=list)
    note: str = ""


# ---- reading MLflow --------------------------------------------------------------------------


def run_id_of(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("mlflow_run_id") or "")


def learning_curves(client: MlflowClient | None, trials: list[FrozenTrial], metric: str) -> list[Curves]:
    """The objective metric and its train counterpart per epoch, from each trial's MLflow run.

    A trial whose run is not in this store falls back to Optuna's intermediate values (the objective
    metric only), so a report still has curves when MLflow lived elsewhere.
    """
    keys = [metric, metric.replace("val_", "train_", 1)]
    out = []
    for t in trials:
        c = Curves(t.number, float(t.values[0]) if t.values else float("nan"))
        try:
            for key in keys:
                got = [] if client is None else client.get_metric_history(run_id_of(t), key)
                history = sorted(got, key=lambda m: m.step)
                if history:
                    c.series[key] = [(int(m.step), float(m.value)) for m in history]
        except Exception:  # no run id, or the run is in another store
            c.series = {}
        if not c.series.get(metric):
            c.series = {metric: sorted(record_lib.curve(t).items())}
            c.source = "Optuna"
        out.append(c)
    return out


def best_artifacts(client: MlflowClient | None, trial: FrozenTrial) -> BestArtifacts:
    """``confusion_matrix.png`` and ``per_class_accuracy.csv`` of the trial's MLflow run."""
    run_id = run_id_of(trial)
    if not run_id:
        return BestArtifacts(note=f"trial {trial.number} has no MLflow run id")
    if client is None:
        return BestArtifacts(note=f"no MLflow store to read trial {trial.number}'s run {run_id} from")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file is noise here
    found = BestArtifacts()
    with tempfile.TemporaryDirectory(prefix="sweeper-report-") as d:
        for name in ("confusion_matrix.png", "per_class_accuracy.csv"):
            try:
                path = Path(client.download_artifacts(run_id, name, d))
            except Exception as e:
                found.note = (
                    f"{name} of trial {trial.number} (MLflow run {run_id}) could not be read: "
                    f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
                )
                continue
            if name.endswith(".png"):
                found.confusion_png = path.read_bytes()
            else:
                with open(path, newline="") as f:
                    found.per_class = list(csv.DictReader(f))
    return found


# ---- figures ---------------------------------------------------------------------------------


def _curves_figure(curves: list[Curves], metric: str) -> Any:
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    palette = qualitative.Plotly
    for i, c in enumerate(curves):
        color = palette[i % len(palette)]
        for key, points in c.series.items():
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers",
                    name=f"#{c.number} {key}",
                    line={"color": color, "dash": "solid" if key == metric else "dot"},
                    meta={"trial": c.number, "key": key, "source": c.source},
                )
            )
    fig.update_layout(
        title="Learning curves of the top trials (solid: validation, dotted: train)",
        xaxis={"title": "epoch", "dtick": 1},
        yaxis_title=metric.replace("val_", ""),
        height=460,
    )
    return fig


def _ablation_figure(ab: ablation_lib.Ablation) -> Any:
    import plotly.graph_objects as go

    spans: list[tuple[str, float, float, float]] = []  # (option, effect, low, high), best option last:
    for r in reversed(ab.rows):  # plotly draws the first category at the bottom
        if r.effect is not None and r.low is not None and r.high is not None:
            spans.append((r.param, r.effect, r.low, r.high))
    fig = go.Figure(
        go.Scatter(
            x=[e for _, e, _, _ in spans],
            y=[p for p, _, _, _ in spans],
            mode="markers",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [hi - e for _, e, _, hi in spans],
                "arrayminus": [e - lo for _, e, lo, _ in spans],
            },
            marker={"size": 10},
            name="effect",
        )
    )
    fig.add_vline(x=0, line_dash="dash", line_color="#888")
    fig.update_layout(
        title=f"Effect of turning each option on ({ab.metric} at epoch {ab.epoch}, "
        f"{ablation_lib.LEVEL:.0%} bootstrap interval)",
        xaxis_title=f"mean(on) - mean(off) of {ab.metric}",
        height=120 + 40 * max(len(spans), 1),
    )
    return fig


def figures(
    study: optuna.Study, spec: Study, curves: list[Curves], ab: ablation_lib.Ablation | None
) -> list[tuple[str, str, Any]]:
    """``(div id, heading, figure or a note saying why there is none)`` in report order."""
    from optuna import visualization as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    name = spec.metric
    target: dict[str, Any] = {"target": lambda t: t.values[0]} if spec.multi else {}  # the metric
    optuna_plots: list[tuple[str, str, Any]] = [
        (
            "plot-history",
            "Optimization history",
            lambda: vis.plot_optimization_history(study, target_name=name, **target),
        ),
        (
            "plot-intermediate",
            f"{name} per epoch of every trial (where pruning cut them)",
            lambda: vis.plot_intermediate_values(study),
        ),
        (
            "plot-parallel",
            "Parallel coordinates",
            lambda: vis.plot_parallel_coordinate(study, target_name=name, **target),
        ),
        (
            "plot-importance",
            "Parameter importances",
            lambda: vis.plot_param_importances(study, target_name=name, **target),
        ),
        (
            "plot-slice",
            "Slices: the objective against each parameter",
            lambda: vis.plot_slice(study, target_name=name, **target),
        ),
    ]
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    out: list[tuple[str, str, Any]] = []
    if spec.multi:
        out.append(
            ("plot-pareto", "Pareto front: the trade-off of each cost against " + name, pareto(study, spec))
        )
    if ab is not None and any(r.low is not None for r in ab.rows):
        out.append(("plot-ablation", "Ablation: effect of each on/off option", _ablation_figure(ab)))
    for div, title, make in optuna_plots:
        if div == "plot-intermediate":
            fig = make().update_layout(xaxis={"title": "epoch", "dtick": 1}) if reported else None
            none = (
                "a multi-objective study reports no epochs to Optuna (it prunes single objectives only); "
                "the learning curves come from MLflow"
                if spec.multi
                else "no trial has reported an epoch yet"
            )
            out.append((div, title, fig or none))
        elif len(complete) < (2 if div == "plot-importance" else 1):
            need = "two complete trials" if div == "plot-importance" else "one complete trial"
            out.append((div, title, f"needs at least {need}"))
        else:
            try:
                out.append((div, title, make()))
            except Exception as e:  # optuna refuses some studies (e.g. one distinct value per param)
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                out.append((div, title, f"not available: {why}"))
        if div == "plot-history":
            curves_fig = _curves_figure(curves, name) if curves else "needs at least one complete trial"
            top = f"top {len(curves)} " if curves else "top "
            out.append(("plot-curves", f"Learning curves of the {top}trials", curves_fig))
    return out


def pareto(study: optuna.Study, spec: Study) -> Any:
    """One panel per cost: every complete trial's cost against the metric, the Pareto front marked and
    joined (the same front `sweeper show` lists), each point labelled with its trial number."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [m for m, _ in spec.objectives]
    front = {t.number for t in record_lib.pareto_front(study, spec.objectives)}
    done = [t for t in record_lib.own_complete(study) if t.values and len(t.values) == len(names)]
    if not done:
        return "needs at least one complete trial"
    fig = make_subplots(rows=1, cols=len(spec.costs), shared_yaxes=True)
    for col, (cost, _) in enumerate(spec.costs, start=1):
        pts = sorted(((objectives.values(t, names), t) for t in done), key=lambda p: p[0][cost])
        for on, label, style in ((False, "other trials", "markers"), (True, "Pareto front", "lines+markers")):
            sel = [(v, t) for v, t in pts if (t.number in front) == on]
            fig.add_trace(
                go.Scatter(
                    x=[v[cost] for v, _ in sel],
                    y=[v[spec.metric] for v, _ in sel],
                    mode=style,
                    name=label,
                    text=[f"trial {t.number}" for _, t in sel],
                    marker={"color": "#d62728" if on else "#9aa0a6", "size": 9 if on else 7},
                    legendgroup=label,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=f"{cost} ({objectives.COST_UNITS[cost]})", row=1, col=col)
    fig.update_yaxes(title_text=spec.metric, row=1, col=1)
    return fig.update_layout(height=420, margin={"t": 30})


# ---- html ------------------------------------------------------------------------------------
