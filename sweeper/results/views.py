"""What ``studies`` and ``show`` tell, as plain data (printed as text, or as JSON with ``--json``).

Both forms come from the same dictionaries, so a script reading the JSON sees exactly what a person reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.results import confirm, provenance
from sweeper.store import record as record_lib
from sweeper.study import objectives
from sweeper.study import spec as spec_lib


def trial_view(t: FrozenTrial, names: list[str] | None = None) -> dict[str, Any]:
    """One trial: number, state, value (of the metric), best epoch, searched params, why it ended as it
    did, and with ``names`` (a multi-objective study) every objective's value and measured cost."""
    view = {
        "number": t.number,
        "state": t.state.name,
        "value": record_lib.primary(t),
        "best_epoch": t.user_attrs.get(record_lib.BEST_EPOCH),
        "params": dict(t.params),
        "why": record_lib.why(t),
    }
    if names:
        view["objectives"] = objectives.values(t, names)
    return view


def study_view(src: record_lib.Recorded, top: int) -> dict[str, Any]:
    """A stored study: its counts, what it ran with, the best trial and the ``top`` complete trials."""
    spec, st = src.spec, src.study
    trials = st.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and record_lib.primary(t) is not None]
    done.sort(key=lambda t: record_lib.primary(t) or 0.0, reverse=spec.direction == "maximize")
    best = None if spec.multi else confirm.sweep_best(st, spec.direction)
    rec = src.record
    names = [m for m, _ in spec.objectives] if spec.multi else None
    return {
        "study": spec.name,
        "metric": spec.metric,
        "direction": spec.direction,
        **front_view(st, spec),
        "counts": record_lib.counts(trials),
        "record": None
        if rec is None
        else {"path": rec.path, "overrides": rec.overrides, "data": rec.data, "versions": rec.versions},
        "as_run": _as_run_view(provenance.of(spec, rec, trials)),
        "best": None if best is None else trial_view(best),
        "confirmation": None
        if spec.multi
        else confirm.view(confirm.confirmation(st, spec.direction), spec.metric),
        "top": [trial_view(t, names) for t in done[:top]],
    }


def show_lines(view: dict[str, Any]) -> list[str]:
    c = view["counts"]
    lines = [
        f"study {view['study']}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
        f"{c['running']} running"
    ]
    lines += _record_lines(view["record"])
    lines += [f"  {x}" for x in (view["as_run"]["summary"], view["as_run"]["file_note"]) if x]
    best, metric, conf = view["best"], view["metric"], view.get("confirmation")
    if conf is not None:
        lines.append(conf["headline"])
    if view.get("pareto_front") is not None:
        lines += front_lines(view)
    elif best is None:
        lines.append("no complete trial yet")
    else:
        which = "best single trial (one seed)" if conf and conf["winner"] else "best trial"
        lines.append(
            f"{which} {best['number']}: {metric}={best['value']:.4f} at epoch {best['best_epoch'] or '?'}"
        )
        lines += [f"  {k} = {v}" for k, v in sorted(best["params"].items())]
    if conf is not None:
        lines += ["", *conf["table"]]
    if "top" not in view:
        return lines
    keys = view["searched"]
    lines += ["", "  ".join([f"{'trial':>5}", f"{metric:>8}", f"{'epoch':>5}", *keys])]
    for t in view["top"]:
        cells = [f"{t['number']:>5}", f"{t['value']:>8.4f}", f"{t['best_epoch'] or '':>5}"]
        cells += [_fmt(t["params"].get(k)).rjust(len(k)) for k in keys]
        lines.append("  ".join(cells))
    return lines


def front_view(st: optuna.Study, spec: spec_lib.Study) -> dict[str, Any]:
    """The study's objectives, its searched keys, and (a trade-off's) Pareto front, trial by trial."""
    names = [m for m, _ in spec.objectives]
    front = record_lib.pareto_front(st, spec.objectives) if spec.multi else None
    return {
        "objectives": [{"metric": m, "direction": d} for m, d in spec.objectives],
        "pareto_front": None if front is None else [trial_view(t, names) for t in front],
        "searched": sorted(spec.space),
    }


def front_lines(view: dict[str, Any]) -> list[str]:
    """A multi-objective study's Pareto front: each trial no other beats on every objective."""
    front, objs = view["pareto_front"], view["objectives"]
    if not front:
        return ["the Pareto front is empty: no complete trial with finite values that met the constraints"]
    names = [o["metric"] for o in objs]
    goal = ", ".join(f"{o['direction'][:3]} {o['metric']}" for o in objs)
    keys = view["searched"]
    out = [
        f"Pareto front ({len(front)} trial{'s' if len(front) != 1 else ''}; {goal}); choose one with "
        "`sweeper refit-best --pick 'val_acc>=X,min:COST'`",
        "  ".join([f"{'trial':>5}", *(f"{n:>10}" for n in names), *keys]),
    ]
    for t in front:
        cells = [f"{t['number']:>5}", *(f"{_cost(t['objectives'].get(n)):>10}" for n in names)]
        cells += [_fmt(t["params"].get(k)).rjust(len(k)) for k in keys]
        out.append("  ".join(cells))
    return out


def _cost(v: float | None) -> str:
    return "-" if v is None else objectives.fmt(v)


def _record_lines(rec: dict[str, Any] | None) -> list[str]:
    """What the study ran with: file, overrides, data and versions (from the study record)."""
    if rec is None:
        return []
    given = " ".join(provenance.flags(rec["overrides"]))
    d = rec["data"]
    images = ", ".join(f"{n} {k}" for k, n in d.get("images", {}).items())
    return [
        f"  ran with: {rec['path']} {given}".rstrip(),
        f"  data: {d.get('root')} ({len(d.get('classes', []))} classes, {images}; digest {d.get('digest')})",
        "  versions: " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items()),
    ]


def _as_run_view(a: provenance.AsRun) -> dict[str, Any]:
    """What ran (backbones, data, overrides) and the study file's own description, marked as the file's."""
    return {**dataclasses.asdict(a), "summary": provenance.summary(a), "file_note": provenance.file_note(a)}


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---- every study: the files, and what storage holds ----------------------------------------------


def studies_view(store: optuna.storages.BaseStorage | None) -> list[dict[str, Any]]:
    """One row per study file (valid or not) and per stored study that no file names (``--name``)."""
    stored = {s.study_name: s for s in optuna.get_all_study_summaries(store)} if store is not None else {}
    rows: list[dict[str, Any]] = []
    named: set[str] = set()
    for path in spec_lib.available_studies():
        try:
            name = spec_lib.load(str(path)).name
        except SweeperError as e:
            rows.append({"study": path.stem, "file": str(path), "error": str(e)})
            continue
        named.add(name)
        rows.append(_row(name, path, stored.get(name) is not None, store))
    rows += [_row(name, None, True, store) for name in sorted(set(stored) - named)]
    return rows


def _row(
    name: str, path: Path | None, exists: bool, store: optuna.storages.BaseStorage | None
) -> dict[str, Any]:
    c = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
    best = None
    if exists and store is not None:
        st = optuna.load_study(study_name=name, storage=store)
        c = record_lib.counts(st.get_trials(deepcopy=False))
        if c["complete"]:
            top = record_lib.own_complete(st)
            pick = max if st.directions[0].name == "MAXIMIZE" else min
            best = pick((record_lib.primary(t) or 0.0 for t in top), default=None)
    keys = ("complete", "pruned", "fail", "running")
    return {"study": name, "file": str(path) if path else None, **{k: c[k] for k in keys}, "best": best}


def studies_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'study':<20} {'complete':>8} {'pruned':>7} {'failed':>7} {'best':>8}  file"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['study']:<20} invalid: {r['error']}")
            continue
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        where = r["file"] or "(in storage only)"
        lines.append(
            f"{r['study']:<20} {r['complete']:>8} {r['pruned']:>7} {r['fail']:>7} {best:>8}  {where}"
        )
    return lines


# ---- the winner as a study file --------------------------------------------------------------------


def best_document(src: record_lib.Recorded, best: FrozenTrial, why: str = "") -> dict[str, Any]:
    """A study file that pins trial ``best`` (the winner): every parameter it trained with (where it
    differs from the default), nothing searched. ``run-study`` on it trains that configuration again."""
    spec = src.spec
    cfg = record_lib.trial_config(best)
    if cfg is None:  # a trial from before configs were recorded: its params through the study
        cfg = spec.resolve(dict(best.params))
    defaults = spec_lib.DEFAULTS
    fixed = {
        k: v
        for k, v in spec_lib.plain(cfg.flat()).items()
        if k != "epochs" and v != spec_lib.plain(defaults[k])
    }
    doc = spec_lib.to_document(spec)
    doc.update(
        name=f"{spec.name}-best",
        description=f"Trial {best.number} of {spec.name!r} ({_values_text(best, spec)}), pinned."
        + (f" {why[0].upper()}{why[1:]}." if why else ""),
        epochs=cfg.epochs,
        sampler={"name": "random", "seed": cfg.seed},
        pruner={"name": "none"},
        fixed=fixed,
        space={},
    )
    for searching in ("design", "enqueue", "objectives", "cells"):  # the winner's cell: in its values
        doc.pop(searching, None)
    doc["objective"] = {"metric": spec.metric, "direction": spec.direction}  # a trade-off: its metric alone
    return doc


def _values_text(t: FrozenTrial, spec: spec_lib.Study) -> str:
    names = [m for m, _ in spec.objectives]
    vals = objectives.values(t, names)
    return ", ".join(
        f"{k}={objectives.fmt(vals[k]) if k != spec.metric else format(vals[k], '.4f')}"
        for k in names
        if k in vals
    )
