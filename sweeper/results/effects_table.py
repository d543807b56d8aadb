"""The effects fit in words: the sentences that say what was fitted and what it holds, and the table.

``sweeper show --ablation`` prints both; the report puts the same sentences above its HTML table. They
say, in this order: which runs (and whether the design is complete), how sigma was obtained, which error
rate the verdicts hold and over which family, what the intervals cover, the design's resolution as run,
the design runs that are missing and what losing them did, and the smallest effect the study detects.
"""

from __future__ import annotations

from sweeper.results.effects import LEVEL, POWER, Effect, Fit, Noise
from sweeper.study import planning

NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}
HOLDS = {
    "holm": "the chance of any false helps/hurts in the table is at most {a}",
    "bh": "the expected share of false calls among the helps/hurts is at most {a}",
}
SHOWN = 4  # names listed before "and N more"


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return "; ".join(names[:SHOWN]) + more


def runs_line(f: Fit) -> str:
    r = f.design
    short = [
        f"block {b} (seed {seed}) has {used} of {n}" for b, (seed, used, n) in enumerate(r.blocks) if used < n
    ]
    state = "complete design" if not short else f"incomplete: {'; '.join(short)}"
    blocks = len(r.blocks)
    return (
        f"{f.metric} of {f.runs} of {r.planned} design runs ({state}); every term fitted jointly by least "
        f"squares (-1/+1 coding; effect = on - off)"
        + (f" with the seed as a block term ({blocks} blocks)" if blocks > 1 else "")
    )


def _lack(n: Noise) -> str:
    """The lack-of-fit df, split into the interactions' alias chains and the rest."""
    lack = n.residual_df - n.pure_df
    if not n.chains:
        return f"{lack} in columns clear of every main effect and two-way interaction"
    rest = lack - n.chains
    return (
        f"{n.chains} in the two-way interactions' alias chains (interactions inflate them, so the intervals "
        f"err wide; --interactions takes them out of sigma)"
        + (f", {rest} in columns clear of both" if rest else "")
    )


def noise_line(f: Fit) -> str:
    n = f.noise
    if n.source == "residual":
        return (
            f"sigma {n.sigma:.4f} per run from {n.residual_df} residual df, all lack of fit (no run repeats "
            f"another's settings): {_lack(n)}"
        )
    if n.source == "lack of fit":
        return (
            f"sigma {n.sigma:.4f} per run from the {n.residual_df - n.pure_df} lack-of-fit df (the settings' "
            f"scatter around the fit: {_lack(n)}), not from the {n.pure_df} df of replicate scatter (sigma "
            f"{n.sigma_pure:.4f}): the runs of one setting share the validation set and how it happens to "
            "suit that setting, which the replicate scatter leaves out"
        )
    if n.source == "replicates":
        return (
            f"sigma {n.sigma:.4f} per run from {n.pure_df} df of replicate scatter only (same settings, "
            "another seed; the model fits every setting): how the validation set suits each setting is "
            "left out, so these intervals may be too narrow"
        )
    if n.source == "binomial":
        return (
            "no residual df: sigma stands in from the validation set's binomial SE alone, which leaves "
            "seed noise out: these intervals are too narrow"
        )
    return "no residual df and no validation size: no intervals"


def rule_line(f: Fit) -> str:
    a = f"{1 - LEVEL:.0%}"
    mains = sum(1 for e in f.effects if " x " not in e.term)
    family = f"{len(f.effects)} terms" + (f" ({mains} main effects)" if mains < len(f.effects) else "")
    return (
        f"verdicts: helps/hurts where the {NAMES[f.multiplicity]}-adjusted p < {1 - LEVEL:.2f} across the "
        f"family of all {family} in the table ({HOLDS[f.multiplicity].format(a=a)}); negligible: the "
        f"{LEVEL:.0%} interval lies within +-{f.effect:.4f}; intervals: {LEVEL:.0%} t per term, unadjusted"
    )


def cover_line(f: Fit) -> str:
    images = f"{f.n_val} validation images" if f.n_val else "validation images"
    return (
        f"every run is scored on the same {images}: the effects and intervals are those on this "
        "validation set, conditional on it; how another draw of images would move them is not in the "
        "intervals"
    )


def design_lines(f: Fit) -> list[str]:
    """The resolution as run, or the missing runs with their reasons and what losing them did."""
    a, r = f.aliasing, f.design
    lines = []
    if r.missing:
        said = [f"{m.label} ({m.state}{': ' + m.why if m.why else ''})" for m in r.missing]
        lines.append(f"design runs without a result ({len(r.missing)}): " + _listed(said))
        lines.append(_consequence(a))
    elif a is not None:
        lines += planning.alias_lines(a) if a.resolution <= 3 else planning.alias_lines(a)[:1]
    if r.outside:
        lines.append(f"left out: {r.outside} complete trials off the design (sampled, not queued by it)")
    if f.aliased:
        lines.append(
            f"not estimable from these runs, so not in the table (aliased): {len(f.aliased)} terms: "
            + _listed(list(f.aliased))
        )
    return lines


def _consequence(a: planning.Aliasing | None) -> str:
    if a is None:
        return "without them nothing is left to fit"
    said = []
    if a.unbalanced:
        said.append("unbalanced: " + _listed([f"{d} on {on} / off {off}" for d, on, off in a.unbalanced]))
    if a.correlated:
        pairs = sorted(a.correlated, key=lambda c: -abs(c[2]))
        said.append(
            "main effects now correlated: " + _listed([f"{x} ~ {y} (r {r:+.2f})" for x, y, r in pairs])
        )
    if a.leaks:
        top = max(abs(r) for _, _, r in a.leaks)
        said.append(
            f"main effects no longer clear of two-way interactions (|r| up to {top:.2f}): an interaction "
            "now biases them"
        )
    if not said:
        return "without them the design keeps its balance and its resolution"
    return "without them the design is " + "; ".join(said)


def power_lines(f: Fit) -> list[str]:
    lines = []
    if f.binomial_se is not None and f.n_val:
        lines.append(
            f"validation: {f.n_val} images, binomial SE {f.binomial_se:.4f} per run "
            f"({100 * f.binomial_se:.2f} points)"
        )
    found = [
        f"{x:.4f} from the runs' scatter" if (x := f.detectable) is not None else None,
        f"{x:.4f} from the validation size alone" if (x := f.detectable_binomial) is not None else None,
    ]
    if any(found):
        lines.append(
            f"smallest effect this study calls ({POWER:.0%} power, at {NAMES[f.multiplicity]}'s strictest "
            f"step): "
            + ", ".join(s for s in found if s)
            + f"; asked about: {f.effect:.4f}"
            + (
                " -- too small for this study: more runs or a larger validation set (data.val_from_train)"
                if (f.detectable or 0) > f.effect
                else ""
            )
        )
    return lines


def summary(f: Fit) -> list[str]:
    """What the fit compared, what its verdicts hold and what it can resolve, in sentences."""
    if not f.effects:
        return [runs_line(f), noise_line(f), *design_lines(f)]
    return [
        runs_line(f),
        noise_line(f),
        rule_line(f),
        cover_line(f),
        *design_lines(f),
        *power_lines(f),
    ]


def row(e: Effect) -> list[str]:
    """One effect as table cells: term, effect, SE, interval, adjusted p, verdict."""
    return [
        e.term,
        f"{e.estimate:+.4f}",
        f"{e.se:.4f}",
        f"[{e.low:+.4f}, {e.high:+.4f}]",
        f"{e.p_adjusted:.3f}",
        e.verdict,
    ]


def head(f: Fit) -> list[str]:
    return ["term", "effect", "SE", f"{LEVEL:.0%} interval", f"p ({NAMES[f.multiplicity]})", "verdict"]


def format_table(f: Fit) -> list[str]:
    """The fit as aligned text lines, for ``sweeper show --ablation``."""
    if not f.effects:
        return [*summary(f), "", "not enough complete design runs for a fit yet"]
    cells = [head(f), *(row(e) for e in f.effects)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    left = (0, 3, len(widths) - 1)  # the term, the interval and the verdict read left-aligned
    lines = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    return [*summary(f), "", *(line.rstrip() for line in lines)]
