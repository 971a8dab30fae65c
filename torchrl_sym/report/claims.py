"""The papers' comparative claims (:data:`torchrl_sym.published.CLAIMS`) tested on the runs:
one row per claim, dataset and pair of cells, a Welch interval of the difference of their mean
final scores, a verdict, and the page's claims section."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchrl_sym.published import CLAIMS, Claim, published_for, published_order
from torchrl_sym.report._text import _fmt, _Notes
from torchrl_sym.report.stats import holm, welch_test
from torchrl_sym.tasks import task_name

if TYPE_CHECKING:
    from torchrl_sym.report.cells import Cell, Report

__all__ = ["ALPHA", "DEFAULT_CLAIM_SEEDS", "ClaimRow", "claim_rows"]

DEFAULT_CLAIM_SEEDS = 3  # the protocol's seeds per cell: a claim's verdict needs this many
ALPHA = 0.05  # the family-wise error rate of the claims' verdicts (Holm)
VERDICTS = ("agrees", "contradicts", "not contradicted", "not resolved", "pending")


def _verdict(expected: int, ci: tuple[float, float] | None, enough: bool) -> str:
    """The uncorrected verdict: from the 95% Welch interval alone (zero outside it, p < 0.05)."""
    if not enough:
        return "pending"
    if ci is None:
        return "not resolved"
    low, high = ci
    if expected == 0:  # "not below"
        return "contradicts" if high < 0 else "not contradicted"
    if (expected > 0 and low > 0) or (expected < 0 and high < 0):
        return "agrees"
    if (expected > 0 and high < 0) or (expected < 0 and low > 0):
        return "contradicts"
    return "not resolved"


def _holm_verdict(expected: int, diff: float, p_holm: float | None, enough: bool) -> str:
    """The verdict from the Holm-adjusted p-value: a difference counts when ``p_holm < ALPHA``,
    on the side of zero its sign gives."""
    if not enough:
        return "pending"
    if p_holm is None:
        return "not resolved"
    significant = p_holm < ALPHA
    if expected == 0:  # "not below"
        return "contradicts" if significant and diff < 0 else "not contradicted"
    if not significant:
        return "not resolved"
    return "agrees" if (diff > 0) == (expected > 0) else "contradicts"


@dataclass
class ClaimRow:
    """One paper claim tested on one dataset: ``cell`` (the claiming algorithm) against ``other``.

    ``expected``: +1 the claim puts ``cell`` above ``other``, -1 below (a published order),
    0 "not below" (Sf-AC's claim). ``diff`` is mean(cell finals) - mean(other finals); ``ci`` its
    95% Welch t interval and ``p`` the two-sided Welch p-value (None with fewer than 2 runs in a
    cell or no spread at all). ``tested``: the row is one of the family of tests (both cells have
    ``claim_seeds`` valid runs and there is a p-value); ``p_holm`` its Holm-adjusted p-value over
    that family. ``verdict`` is the one the page states, from ``p_holm``; ``raw_verdict`` the
    uncorrected one, from the 95% interval alone."""

    claim: Claim
    dataset: str
    cell: Cell
    other: Cell
    expected: int
    diff: float
    ci: tuple[float, float] | None
    verdict: str  # "agrees", "contradicts", "not contradicted", "not resolved", "pending"
    p: float | None = None
    p_holm: float | None = None
    raw_verdict: str = "pending"
    tested: bool = False


def claim_rows(
    cells: Sequence[Cell],
    claims: Sequence[Claim] = CLAIMS,
    *,
    claim_seeds: int = DEFAULT_CLAIM_SEEDS,
) -> list[ClaimRow]:
    """Every claim tested on every dataset where the claiming algorithm and an algorithm it is
    compared with both have valid runs (each variant a row of its own). A published-order claim
    is tested only on tasks where the papers' numbers order the pair (:func:`published_order`).

    Each row is a Welch test of the difference of the two cells' mean final scores. The rows
    where both cells have ``claim_seeds`` valid runs and the test has a p-value form one family
    (every dataset and claim together); their p-values are Holm-adjusted over that family
    (:func:`~torchrl_sym.report.stats.holm`) and the verdict (``verdict``) is read from the
    adjusted p-value at ``ALPHA`` = 0.05, the direction from the sign of the difference; rows
    with fewer runs are "pending":

    - published order: "agrees" when the difference is significant and on the published side,
      "contradicts" when significant and on the other side, "not resolved" otherwise;
    - not below: "contradicts" when significant and below zero, else "not contradicted".

    ``raw_verdict`` is the same reading of the uncorrected 95% interval (zero outside it).
    """
    rows = []
    for claim in claims:
        for cell in cells:
            if cell.algo != claim.algo or not cell.valid:
                continue
            task = task_name(cell.dataset)
            for other_algo in claim.against:
                if claim.kind == "not_below":
                    expected = 0
                elif claim.kind == "published_order":
                    expected = published_order(claim.algo, other_algo, task)
                    if expected == 0:
                        continue
                else:
                    raise ValueError(f"claim of {claim.algo}: unknown kind {claim.kind!r}")
                for other in cells:
                    if other.dataset != cell.dataset or other.algo != other_algo or not other.valid:
                        continue
                    a, b = cell.finals, other.finals
                    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
                    test = welch_test(a, b)
                    ci, p = test if test is not None else (None, None)
                    enough = min(len(a), len(b)) >= claim_seeds
                    raw = _verdict(expected, ci, enough)
                    rows.append(
                        ClaimRow(claim, cell.dataset, cell, other, expected, diff, ci, raw, p=p,
                                 raw_verdict=raw, tested=enough and p is not None)
                    )  # fmt: skip
    adjusted = holm([r.p if r.tested else None for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row.p_holm = p_holm
        row.verdict = _holm_verdict(row.expected, row.diff, p_holm, row.raw_verdict != "pending")
    return rows


def _claim_text(row: ClaimRow, notes: _Notes) -> str:
    mark = notes.add(f"{row.claim.statement}. Source: {row.claim.source}")
    if row.expected == 0:
        return f"{row.cell.label} not below {row.other.label} {mark}"
    task = task_name(row.dataset)

    def scores(algo: str) -> str:
        entries = published_for(algo, task)
        return ", ".join(
            _fmt(p.score)
            + (f" {p.column}" if len(entries) > 1 else "")
            + (" (unverified)" if p.unverified else "")
            for p in entries
        )

    side = "above" if row.expected > 0 else "below"
    return (
        f"{row.cell.label} {side} {row.other.label} (published {scores(row.cell.algo)} vs "
        f"{scores(row.other.algo)}) {mark}"
    )


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _side(row: ClaimRow) -> str:
    """Where the cell lies against the other: a contradiction puts it opposite to the claim."""
    return "below" if row.diff < 0 else "above"


def _claims_section(report: Report, start: Path) -> list[str]:
    n = report.claim_seeds
    claims = report.claims
    notes = _Notes("c", start)
    rows = []
    for row in claims:
        a, b = len(row.cell.valid), len(row.other.valid)
        ci = f"[{_fmt(row.ci[0])}, {_fmt(row.ci[1])}]" if row.ci is not None else "–"
        verdict = f"**{row.verdict}**" if row.verdict == "contradicts" else row.verdict
        if row.verdict == "pending":
            verdict += f" ({n} seeds each needed)"
        raw = "–" if row.raw_verdict == "pending" else row.raw_verdict
        p_holm = _fmt_p(row.p_holm) if row.tested else "–"
        rows.append(
            f"| {task_name(row.dataset)} | {_claim_text(row, notes)} | {row.diff:+.1f} | {ci} "
            f"| {a}, {b} | {_fmt_p(row.p)} | {p_holm} | {verdict} | {raw} |"
        )
    m = sum(r.tested for r in claims)
    contradicted = [r for r in claims if r.verdict == "contradicts"]
    decided = [r for r in claims if r.verdict != "pending"]
    if contradicted:
        plain = (
            "Contradicted on our runs (Holm-corrected): "
            + "; ".join(
                f"{r.cell.label} is {_side(r)} {r.other.label} on `{task_name(r.dataset)}` "
                f"({r.diff:+.1f}, CI [{_fmt(r.ci[0])}, {_fmt(r.ci[1])}], Holm p "
                f"{_fmt_p(r.p_holm)})"
                for r in contradicted
            )
            + "."
        )
    elif decided:
        plain = (
            f"No claim is contradicted (Holm-corrected) by a comparison with {n} or more seeds "
            "per cell."
        )
    else:
        plain = f"No comparison has {n} seeds in both cells yet: every verdict is pending."
    raw_only = [r for r in claims if r.raw_verdict == "contradicts" != r.verdict]
    if raw_only:
        plain += (
            " Contradicted by the uncorrected 95% interval only, not after the correction: "
            + "; ".join(
                f"{r.cell.label} {_side(r)} {r.other.label} on `{task_name(r.dataset)}` "
                f"({r.diff:+.1f}, p {_fmt_p(r.p)}, Holm p {_fmt_p(r.p_holm)})"
                for r in raw_only
            )
            + "."
        )
    unresolved = [r for r in claims if r.verdict == "not resolved"]
    if unresolved:
        plain += (
            " Not confirmed on our runs (not significant after the correction, or no interval): "
            + "; ".join(
                f"{r.cell.label} {'above' if r.expected > 0 else 'below'} {r.other.label} on "
                f"`{task_name(r.dataset)}` ({r.diff:+.1f})"
                for r in unresolved
            )
            + "."
        )
    counts = ", ".join(
        f"{sum(r.verdict == v for r in claims)} {v}"
        for v in VERDICTS
        if any(r.verdict == v for r in claims)
    )
    pending = len(claims) - sum(r.raw_verdict != "pending" for r in claims)
    untestable = len(claims) - m - pending
    others = []
    if pending:
        others.append(f"{pending} pending")
    if untestable:
        others.append(f"{untestable} without an interval: no spread in either cell")
    count = f"{len(claims)} comparison{'s' if len(claims) != 1 else ''}"
    family = (
        f"This section makes {count}, each a Welch test with a verdict"
        if not others
        else f"This section makes {count}, {m} of them Welch tests with a verdict "
        f"({'; '.join(others)})"
    ) + (
        f". The verdicts are Holm-corrected over those {m}: a difference counts when its "
        f"Holm-adjusted p-value is below {ALPHA:g}, which keeps the chance of any wrong "
        f"verdict among the {m} at {ALPHA:.0%} or less (uncorrected, {m} tests at 5% each "
        f"would expect {m * ALPHA:.1f} wrong ones if no difference were real). The last "
        "column gives the uncorrected verdict, from the 95% interval alone (zero outside "
        "it, p < 0.05)."
        if m
        else ". Once comparisons have verdicts, they are Holm-corrected over all of them."
    )
    lines = [
        "## The papers' claims on our runs",
        "",
        "Each row compares two cells of one dataset by their final scores: the difference of the "
        "means (claiming algorithm minus the other), its 95% Welch t interval and two-sided "
        f"p-value (scipy `ttest_ind(equal_var=False)`). A verdict needs {n} valid seeds in both "
        "cells; with fewer the row is pending. A published order (the papers' D4RL numbers) "
        "*agrees* when the difference is significant and on its side of zero, is *contradicted* "
        "when it is significant and on the other side, and is *not resolved* otherwise; a "
        '"not below" claim is contradicted only by a significant difference below zero. The '
        "papers' numbers are on D4RL's data at their budget; ours are on the datasets and budget "
        "of this page, so a contradiction says the claim does not hold there, not that a paper "
        "is wrong.",
        "",
        family,
        "",
        f"{plain} ({counts}.)",
        "",
        "| dataset | claim | ours: difference of final means | 95% CI (Welch t) | seeds "
        "| p (Welch) | p (Holm) | verdict (Holm) | uncorrected verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Claims:",
        "",
        *notes.lines(),
        "",
    ]
    return lines
