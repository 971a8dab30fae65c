"""Regenerate the results tables in docs/ from the files the runs wrote (never typed by hand).

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table -->`` in a docs page; NAME picks
its builder below, which reads the run's output (``docs/toy2d_<algo>.json`` written by
``recipes/toy2d.py``). ``--check`` exits non-zero when a page is out of date (a test runs it).

    python scripts/make_doc_tables.py            # rewrite the tables in place
    python scripts/make_doc_tables.py --check    # are the docs in sync with the results?
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _load(name: str) -> dict:
    return json.loads((DOCS / f"toy2d_{name}.json").read_text())["result"]


def toy2d_sfac() -> list[str]:
    result = _load("sfac")
    lines = [
        "| τ | fit | std of a | mass where π* = 0 | TV to π* |",
        "|---|---|---|---|---|",
    ]
    names = {
        "forward_kl": "(i) forward KL",
        "js": "(ii) JS",
        "jeffreys": "(iii) Jeffreys on supp π*",
    }
    for tau, entry in result["taus"].items():
        for key, label in names.items():
            fit = entry["fits"][key]
            lines.append(
                f"| {tau} | {label} | {fit['std']:.3f} | {fit['mass_outside_support']:.4f} "
                f"| {fit['tv_to_target']:.3f} |"
            )
    lines += [
        "",
        "| τ | divergence | (iv) exact h, no clip: TV to limit | (i) forward KL: TV to limit "
        "| best (iv) ε, N_loss: TV to limit | clamped rows there |",
        "|---|---|---|---|---|---|",
    ]
    for tau, entry in result["taus"].items():
        for div, est in entry["estimator"].items():
            best = min(est["sweep"], key=lambda s: s["tv_to_limit"])
            lines.append(
                f"| {tau} | {div} | {est['exact_series_unclipped']['tv_to_limit']:.4f} "
                f"| {est['forward_kl_tv_to_limit']:.4f} "
                f"| ε = {best['epsilon']}, N = {best['n_loss']}: {best['tv_to_limit']:.4f} "
                f"| {best['clamped_frac']:.0%} |"
            )
    return lines


def toy2d_srpo() -> list[str]:
    result = _load("srpo")
    names = {"moons": "moons", "8gaussians": "8-Gaussians", "checkerboard": "checkerboard"}
    lines = [
        "| dataset | max ‖a − a_tar‖ at 1/β = 0 | at the targets | 1/β = 0 | 1/β = 0.5 | 1/β = 1 "
        "| mean move at 1/β = 1 | denser than target at 1/β = 1 | model samples | data |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in result.items():
        lam = entry["inverse_betas"]
        dens = entry["mean_log_density"]
        at = {x: dens[lam.index(x)] for x in (0.0, 0.5, 1.0)}
        move = entry["mean_distance"][lam.index(1.0)]
        lines.append(
            f"| {names.get(key, key)} | {entry['max_distance_at_0']:.1e} "
            f"| {entry['mean_log_density_targets']:.2f} | {at[0.0]:.2f} | {at[0.5]:.2f} "
            f"| {at[1.0]:.2f} | {move:.3f} | {entry['fraction_denser_than_target_at_1']:.0%} "
            f"| {entry['model_sample_log_density']:.2f} | {entry['data_log_density']:.2f} |"
        )
    return lines


def toy2d_bdpo() -> list[str]:
    result = _load("bdpo")
    etas = result["etas"]
    head = " | ".join(f"η = {eta}" for eta in etas)
    lines = [f"| | {head} |", "|---|" + "---|" * len(etas)]

    def row(label, fmt):
        lines.append(f"| {label} | " + " | ".join(fmt(e) for e in etas.values()) + " |")

    row(
        "MMD² to the target: actor / behavior",
        lambda e: f"{e['mmd_policy']:.3f} / {e['mmd_behavior']:.3f}",
    )
    row(
        "mean energy: actor / behavior / target",
        lambda e: (
            f"{e['energy_policy']:.3f} / {e['energy_behavior']:.3f} / {e['energy_target']:.3f}"
        ),
    )
    row(
        "`E_{x_N} V̄_N(x_N)` vs `η log E_data exp(E/η)`",
        lambda e: f"{e['value_at_noise']:.3f} vs {e['soft_value']:.3f}",
    )
    lines += [
        "",
        "Cluster frequencies (k = 0..7 = N, NW, W, SW, S, SE, E, NE; energy k/7):",
        "",
        f"| | {head} |",
        "|---|" + "---|" * len(etas),
    ]
    for key, label in (
        ("clusters_policy", "actor"),
        ("clusters_expected", "`w_k ∝ exp(k/(7η))`"),
        ("clusters_behavior", "behavior"),
    ):
        row(label, lambda e, key=key: " / ".join(f"{x:.3f}" for x in e[key]))
    return lines


BUILDERS: dict[str, Callable[[], list[str]]] = {
    "toy2d_bdpo": toy2d_bdpo,
    "toy2d_sfac": toy2d_sfac,
    "toy2d_srpo": toy2d_srpo,
}
_BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def render(text: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in BUILDERS:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(sorted(BUILDERS))}")
        body = "\n".join(BUILDERS[name]()) + "\n"
        return match.group(1) + body + match.group(4)

    return _BLOCK.sub(replace, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is out of date")
    args = parser.parse_args()
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        sys.exit(f"out of date: {', '.join(stale)} (run python scripts/make_doc_tables.py)")
    print("updated: " + ", ".join(stale) if stale else "all tables up to date")


if __name__ == "__main__":
    main()
