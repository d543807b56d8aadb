"""Designed experiments: a study's on/off and categorical dimensions run as a balanced design.

A study that declares ``design:`` does not let its sampler pick the toggles. Every row of the design is
generated up front and queued in Optuna (``enqueue_trial``), so the rows run through the normal sweep
loop, on any number of workers, each exactly once:

- ``factorial``: every combination of the levels of every bool/choice dimension;
- ``fractional``: a two-level fractional factorial of resolution IV or more (no main effect aliased
  with another or with a two-way interaction): 8 runs for up to 4 toggles, 16 for up to 8, 32 for up
  to 16, built from the standard generators (each added factor the product of an odd number of base
  factors; one more factor than base factors takes the product of all of them, resolution V or more);
- ``foldover``: a two-level orthogonal array (Plackett-Burman for 12, 20 or 24 rows, else 2^m) followed
  by its mirror image, every toggle swapped: ``runs`` = twice the array's rows (40 = the 20-run array and
  its mirror, for up to 19 toggles). The mirror makes every main effect clear of every two-way
  interaction (resolution IV) at run counts between the powers of two;
- ``balanced``: ``runs`` rows in which each level of each dimension appears equally often: an
  orthogonal array when one is known for that run count (two-level designs of 2^m runs as above,
  Plackett-Burman for 12, 20 and 24 runs), else the least correlated of many balanced random draws.
  Resolution III at best: two-way interactions leak into the main effects (``sweeper check`` says which).

The default kind is ``fractional`` when every designed dimension has two levels, else ``balanced``.

``repeats: R`` runs the whole design R times. Each block of runs trains with its own seed, the same for
every arm in it: repeat r of a design with seed s + r; a foldover has two blocks per repeat, the array
with s + 2r and its mirror with s + 2r + 1. The fit takes the block (seed) as a term of its model, so a
seed that helps every run of its block is not mistaken for noise or for an effect. Runs go block by
block (a study stopped early holds whole blocks), in an order shuffled by the design's ``seed``.
Dimensions of the space that are not bool/choice (learning rates, ...) are not part of the design: fix
them (recommended), or the study's sampler samples them for every run as it would without a design, and
their variation adds noise to the comparison.

``multiplicity`` names the error rate the verdicts hold across the toggles: ``holm`` (the default) keeps
the chance of any false "helps"/"hurts" in the table at 5%; ``bh`` (Benjamini-Hochberg) keeps the
expected share of false ones among those called at 5%, which calls more real effects when many are real.

This module's schema half imports nothing heavy; numpy and optuna are imported where rows are built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study.checks import _NON_NEG, Fail
from sweeper.study.dims import Dim

if TYPE_CHECKING:
    import numpy as np
    import optuna

Kind = Literal["factorial", "fractional", "foldover", "balanced"]
KINDS = ("factorial", "fractional", "foldover", "balanced")
Multiplicity = Literal["holm", "bh"]
MULTIPLICITY = ("holm", "bh")
KEYS = ("kind", "repeats", "seed", "runs", "effect", "multiplicity")
MAX_ROWS = 1024  # a design larger than this per repeat is a mistake, not a plan
DESIGN_ROW = "sweeper:design_row"  # trial user attribute: "repeat r, row i" of the design
CONFIRM = "sweeper:confirm"  # trial user attribute of `sweeper confirm`'s re-runs: the trial re-run


@dataclass(frozen=True)
class Design:
    """A study's ``design:`` section, validated."""

    kind: Kind = "fractional"
    repeats: int = 1  # the design runs this many times, each block of runs with its own seed
    seed: int = 0  # shuffles the run order and draws a balanced random design
    runs: int | None = None  # balanced and foldover: runs per repeat; None = the smallest that fits
    effect: float = 0.005  # the effect the study must resolve, in objective units (0.005 = 0.5 points)
    dims: tuple[str, ...] = ()  # the space's bool/choice dimensions, in space order
    base_seed: int = 0  # the fixed `seed` (or 0) that the first block trains with
    multiplicity: Multiplicity = "holm"  # the error rate the verdicts hold across the toggles

    @property
    def blocks_per_repeat(self) -> int:
        return 2 if self.kind == "foldover" else 1

    def seeds(self) -> list[int]:
        """One seed per block, in run order (a block: a repeat, or half of a foldover's repeat)."""
        return [self.base_seed + b for b in range(self.repeats * self.blocks_per_repeat)]

    def document(self) -> dict[str, Any]:
        """The section in study-file syntax (``dims`` and ``base_seed`` come from the space and fixed)."""
        doc: dict[str, Any] = {"kind": self.kind, "repeats": self.repeats, "seed": self.seed}
        if self.runs is not None:
            doc["runs"] = self.runs
        doc["effect"] = self.effect
        doc["multiplicity"] = self.multiplicity
        return doc


def parse(raw: object, space: dict[str, Dim], fixed: dict[str, Any], fail: Fail) -> Design:
    """Validate ``design: {kind, repeats, seed, runs, effect, multiplicity}`` against the space it designs."""
    if not isinstance(raw, dict):
        raise fail("design", f"must be a mapping such as {{kind: fractional, repeats: 2}}, got {raw!r}")
    for k in raw:
        if k not in KEYS:
            raise fail(f"design.{k}", f"unknown key{did_you_mean(str(k), KEYS)}; allowed: {', '.join(KEYS)}")
    dims = tuple(k for k, d in space.items() if d.kind in ("bool", "choice") and k != "seed")
    if not dims:
        raise fail("design", "the space has no bool or choice dimension to design")
    if "seed" in space:
        raise fail("space.seed", "a design varies the seed itself (one per block); remove it from space")
    ints = _counts(raw, fail)
    kind = _kind(raw, all(len(levels(space[k])) == 2 for k in dims), ints["runs"] is not None, fail)
    effect = raw.get("effect", 0.005)
    if isinstance(effect, bool) or not isinstance(effect, (int, float)) or float(effect) not in _NON_NEG:
        raise fail("design.effect", f"must be a number >= 0 (objective units), got {effect!r}")
    multiplicity = raw.get("multiplicity", "holm")
    if multiplicity not in MULTIPLICITY:
        raise fail(
            "design.multiplicity",
            f"must be holm (familywise error) or bh (false discovery rate), got {multiplicity!r}"
            f"{did_you_mean(str(multiplicity), MULTIPLICITY)}",
        )
    repeats, seed, n = int(ints["repeats"] or 1), int(ints["seed"] or 0), ints["runs"]
    design = Design(kind, repeats, seed, n, float(effect), dims, int(fixed.get("seed", 0)), multiplicity)
    try:
        n = len(table(design, space))
    except ValueError as e:
        raise fail("design.runs" if "runs" in raw else "design", str(e)) from None
    if n > MAX_ROWS:
        raise fail("design", f"{kind} needs {n} runs per repeat (more than {MAX_ROWS}); use fractional")
    return design


def _kind(raw: dict[str, Any], two: bool, sized: bool, fail: Fail) -> Kind:
    """The kind (default: fractional for on/off toggles, else balanced); ``runs`` only where it applies."""
    kind = raw.get("kind", "fractional" if two else "balanced")
    if kind not in KINDS:
        raise fail(
            "design.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}{did_you_mean(str(kind), KINDS)}"
        )
    if sized and "kind" not in raw and two:
        raise fail(
            "design.runs",
            "name the kind it sizes: foldover (resolution IV) or balanced (resolution III); the default "
            "for on/off toggles, fractional, has its own run count",
        )
    if sized and kind not in ("balanced", "foldover"):
        raise fail(
            "design.runs",
            f"applies to kinds balanced and foldover only; a {kind} design has its own run count",
        )
    return kind  # checked against KINDS above


SEED_DIM = Dim("int", low=0, high=2**32 - 1)
"""The seed as a searched dimension: a design's rows and ``sweeper confirm``'s re-runs fix its value per
run. An integer range (not a choice of the seeds) so that later runs can take seeds the first did not:
Optuna refuses to change a categorical dimension's choices within a study."""


def _counts(raw: dict[str, Any], fail: Fail) -> dict[str, int | None]:
    """``repeats`` (>= 1), ``seed`` (>= 0) and ``runs`` (>= 2, or unset), checked."""
    ints = {k: raw.get(k, d) for k, d in (("repeats", 1), ("seed", 0), ("runs", None))}
    for k, v in ints.items():
        low = 0 if k == "seed" else 2 if k == "runs" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise fail(f"design.{k}", f"must be an integer >= {low}, got {v!r}")
    return ints


def seed_dim(design: Design) -> Dim:
    """The dimension a design adds to the space: each run's seed (its repeat's), the same for every arm."""
    return SEED_DIM


def levels(dim: Dim) -> list[Any]:
    return [False, True] if dim.kind == "bool" else list(dim.choices)


# ---- building the design ---------------------------------------------------------------------------


def table(design: Design, space: dict[str, Dim]) -> list[dict[str, Any]]:
    """One repeat of the design: a row of level values per run (unshuffled, without the seed)."""
    lv = [levels(space[k]) for k in design.dims]
    if design.kind == "factorial":
        n = 1
        for x in lv:
            n *= len(x)
        if n > MAX_ROWS:
            raise ValueError(f"a full factorial needs {n} runs per repeat; use fractional or balanced")
        return [dict(zip(design.dims, combo, strict=True)) for combo in itertools.product(*lv)]
    if design.kind in ("fractional", "foldover"):
        many = [(k, len(x)) for k, x in zip(design.dims, lv, strict=True) if len(x) != 2]
        if many:
            name, count = many[0]
            raise ValueError(
                f"{design.kind} needs two-level dimensions; {name} has {count}: use factorial or balanced"
            )
        k = len(design.dims)
        return _rows(
            design.dims, lv, fractional(k) if design.kind == "fractional" else foldover(k, design.runs)
        )
    return _rows(design.dims, lv, balanced(lv, design.runs, design.seed))


def _rows(dims: tuple[str, ...], lv: list[list[Any]], codes: np.ndarray) -> list[dict[str, Any]]:
    """Level indexes (or -1/+1 codes) to level values."""
    out = []
    for row in codes:
        idx = [int(c > 0) if len(x) == 2 else int(c) for c, x in zip(row, lv, strict=True)]
        out.append({k: x[i] for k, x, i in zip(dims, lv, idx, strict=True)})
    return out


def fractional(k: int) -> np.ndarray:
    """A two-level design for ``k`` factors, coded -1/+1, of resolution IV or more (full for k <= 3)."""
    import numpy as np

    m = 1
    while 2 ** (m - 1) < k:
        m += 1
    m = min(m, k)
    base = np.array(list(itertools.product([-1, 1], repeat=m)))[:, ::-1]
    words = [w for w in _odd_words(m) if len(w) >= 3]
    extra = [tuple(range(m))] if k == m + 1 else words[: k - m]
    cols = [base[:, i] for i in range(m)] + [np.prod(base[:, list(w)], axis=1) for w in extra]
    return np.stack(cols[:k], axis=1)


def _odd_words(m: int) -> list[tuple[int, ...]]:
    """Products of an odd number of the m base factors, longest first: with these as generators no
    word of the defining relation is shorter than four letters (resolution IV)."""
    out = [w for r in range(m, 2, -1) if r % 2 for w in itertools.combinations(range(m), r)]
    return out


def foldover(k: int, runs: int | None = None) -> np.ndarray:
    """An orthogonal two-level array for ``k`` factors (``runs`` / 2 rows) and then its mirror image.

    Every product of two columns takes the same value in a row and in its mirror while every column
    changes sign, so each main effect is orthogonal to each two-way interaction: resolution IV.
    """
    import numpy as np

    sizes = sorted({*PLACKETT_BURMAN, *(2**m for m in range(2, 10))})
    half = [n for n in sizes if n - 1 >= k]
    if runs is None:
        n = half[0]
    elif runs % 2 or runs // 2 not in half:
        fits = ", ".join(str(2 * n) for n in half[:5])
        raise ValueError(
            f"a foldover of {k} toggles runs twice an orthogonal array: runs {fits}, ...; got {runs}"
        )
    else:
        n = runs // 2
    array = (
        _plackett_burman(n)[:, :k]
        if n in PLACKETT_BURMAN
        else _saturated(n.bit_length() - 1, k, even_first=True)
    )
    return np.concatenate([array, -array])


PLACKETT_BURMAN = {  # first rows of the cyclic Plackett-Burman designs (1946); the last run is all -1
    12: "++-+++---+-",
    20: "++--++++-+-+----++-",
    24: "+++++-+-++--++--+-+----",
}


def balanced(lv: list[list[Any]], runs: int | None, seed: int) -> np.ndarray:
    """Rows of level indexes (two-level columns as -1/+1) in which every level appears equally often."""
    import numpy as np

    k = len(lv)
    two = all(len(x) == 2 for x in lv)
    n = runs or _default_runs(lv)
    if two and n & (n - 1) == 0 and n - 1 >= k:
        return _two_level(n, k)
    if two and n in PLACKETT_BURMAN and n - 1 >= k:
        return _plackett_burman(n)[:, :k]
    rng = np.random.default_rng(seed)
    best, score = None, np.inf
    for _ in range(200):  # the least correlated of many balanced draws
        cols = [rng.permutation(np.resize(np.arange(len(x)), n)) for x in lv]
        draw = np.stack([c * 2 - 1 if len(x) == 2 else c for c, x in zip(cols, lv, strict=True)], axis=1)
        s = _max_correlation(draw) if k > 1 else 0.0
        if s < score:
            best, score = draw, s
    assert best is not None
    return best


def _default_runs(lv: list[list[Any]]) -> int:
    """Enough runs for every main effect, a multiple of every level count (and of 4 for two levels)."""
    import math

    step = math.lcm(4, *(len(x) for x in lv))
    need = 1 + sum(len(x) - 1 for x in lv)
    return step * -(-need // step)


def _two_level(n: int, k: int) -> np.ndarray:
    """Two-level orthogonal columns for n = 2^m runs: resolution IV generators first, then the rest."""

    m = n.bit_length() - 1
    if k <= 2 ** (m - 1):
        return fractional(k) if len(fractional(k)) == n else _saturated(m, k)
    return _saturated(m, k)


def _saturated(m: int, k: int, even_first: bool = False) -> np.ndarray:
    """``k`` orthogonal columns of 2^m runs: the base factors, then products of them. Odd products first
    (resolution IV while they last); ``even_first`` for a foldover: an even product is not reversed by
    the mirror, so the mirror's runs are new ones, not the array's own again."""
    import numpy as np

    base = np.array(list(itertools.product([-1, 1], repeat=m)))[:, ::-1]
    words = [w for r in range(1, m + 1) for w in itertools.combinations(range(m), r)]
    if even_first:
        words.sort(key=lambda w: (len(w) != 1, len(w) % 2, len(w)))  # base, even words, then odd
    else:
        words.sort(key=lambda w: (len(w) % 2 == 0, len(w) != 1, -len(w)))  # base, odd words, then even
    return np.stack([np.prod(base[:, list(w)], axis=1) for w in words[:k]], axis=1)


def _plackett_burman(n: int) -> np.ndarray:
    import numpy as np

    first = np.array([1 if c == "+" else -1 for c in PLACKETT_BURMAN[n]])
    rows = [np.roll(first, i) for i in range(n - 1)] + [-np.ones(n - 1, dtype=int)]
    return np.stack(rows)


def _max_correlation(x: np.ndarray) -> float:
    import numpy as np

    c = np.corrcoef(x.T.astype(float))
    return float(np.max(np.abs(c - np.eye(len(c)))))


# ---- running it ------------------------------------------------------------------------------------


def runs(design: Design, space: dict[str, Dim]) -> list[tuple[str, dict[str, Any]]]:
    """Every run of the design, in run order: (its label, its params with its block's seed)."""
    import numpy as np

    rows = table(design, space)
    per_block = len(rows) // design.blocks_per_repeat
    out = []
    for b, seed in enumerate(design.seeds()):
        first = (b % design.blocks_per_repeat) * per_block
        order = first + np.random.default_rng(design.seed + b % design.blocks_per_repeat).permutation(
            per_block
        )
        r = b // design.blocks_per_repeat
        for i in order:
            out.append((f"repeat {r}, row {int(i)}", {**rows[int(i)], "seed": seed}))
    return out


def blocks(design: Design, space: dict[str, Dim]) -> list[tuple[int, int]]:
    """Each block's seed and how many runs it holds, in run order."""
    n = len(table(design, space)) // design.blocks_per_repeat
    return [(seed, n) for seed in design.seeds()]


def check_trials(design: Design, space: dict[str, Dim], trials: int) -> None:
    """Refuse a ``--trials`` that stops the design short: the runs left out would unbalance every effect.

    Raises:
        SweeperError: ``trials`` is fewer than the design's runs.
    """
    planned = sum(n for _, n in blocks(design, space))
    if trials >= planned:
        return
    done, cut = 0, ""
    for b, (seed, n) in enumerate(blocks(design, space)):
        if done + n > trials:
            cut = f"block {b} (seed {seed}) would hold {trials - done} of its {n} runs"
            break
        done += n
    raise SweeperError(
        f"--trials {trials} stops the study's {design.kind} design at {trials} of its {planned} runs "
        f"({cut}), which unbalances every effect it fits: use --trials {planned}"
    )


def enqueue(study: optuna.Study, design: Design, space: dict[str, Dim], total: int) -> int:
    """Queue the first ``total`` runs of the design in the study, each once: a resumed sweep, and every
    worker of this process, sees the runs already queued or run (any state) and skips them.

    The study may hold more trials than the design only as ``sweeper confirm``'s re-runs.

    Returns:
        How many runs were queued now.

    Raises:
        SweeperError: ``total`` asks for more trials than the design (and ``sweeper confirm``'s re-runs) has.
    """
    planned = runs(design, space)
    extra = sum(CONFIRM in t.user_attrs for t in study.get_trials(deepcopy=False))
    if total > len(planned) + extra:
        raise SweeperError(
            f"the study's {design.kind} design has {len(planned)} runs ({len(planned) // design.repeats} "
            f"x {design.repeats} repeat{'s' if design.repeats > 1 else ''}); --trials {total} would add runs "
            "outside it, which the analysis "
            f"cannot balance: use --trials {len(planned)} (or `sweeper confirm` to re-run the best)"
        )
    before = len(study.get_trials(deepcopy=False))
    for label, params in planned[:total]:
        study.enqueue_trial(params, user_attrs={DESIGN_ROW: label}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def requeue_failed(study: optuna.Study) -> int:
    """Queue again each design run that failed (an error, not a divergence: that one completes and the
    fit lists it) and has no other run to come or done: a sampler must never fill a design's place with
    a trial outside it. The sweep's failure limits stop a run that fails every time. Returns how many."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)

    def params(t: optuna.trial.FrozenTrial) -> dict[str, object]:
        return dict(t.system_attrs.get("fixed_params") or t.params)  # a queued trial keeps them apart

    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    taken = [params(t) for t in trials if t.state in alive]
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and DESIGN_ROW in t.user_attrs and params(t) not in taken:
            study.enqueue_trial(params(t), user_attrs={DESIGN_ROW: t.user_attrs[DESIGN_ROW]})
            taken.append(params(t))
            queued += 1
    return queued


def describe(design: Design, space: dict[str, Dim]) -> list[str]:
    """What ``sweeper check`` says about a design: its size, its blocks and seeds, and why no pruner."""
    n = len(table(design, space))
    rest = [k for k, d in space.items() if k not in design.dims and k != "seed"]
    how = f"a {n // 2}-run orthogonal array, then its mirror image" if design.kind == "foldover" else ""
    seeds = ", ".join(map(str, design.seeds()))
    return [
        f"design: {design.kind}, {n} runs{f' ({how})' if how else ''} x {design.repeats} repeat"
        f"{'s' if design.repeats > 1 else ''} = {n * design.repeats} trials (--trials {n * design.repeats}, "
        f"no fewer); {len(design.dims)} designed dimensions; blocks of {n // design.blocks_per_repeat} runs "
        f"with seeds {seeds} (the seed is a term of the fit)",
        "pruner none: every run of the design trains all its epochs (a pruner stops slow starters such as "
        "CutMix and MixUp early, which would bias the comparison of their arms)",
        *(
            [f"not designed, sampled for every run by the sampler: {', '.join(rest)} (fix them to cut noise)"]
            if rest
            else []
        ),
    ]
