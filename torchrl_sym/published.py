"""The papers' published D4RL normalized scores (×100), transcribed once from the specs.

Every number is a :class:`PublishedScore` that names its paper table and the section of
``specs/*.md`` it was copied from, so a results page can cite each number it prints. These are
scores on D4RL's own datasets (locomotion ``-v2``, AntMaze ``-v0``), never on the D4RL-style
data this library generates (``torchrl_sym/<env>/<kind>-v*``); :mod:`torchrl_sym.report` prints
them in their own columns, never mixed with our runs.

Left out on purpose:

- Sf-AC: the paper publishes no per-task table we can cite (``sfac.md`` §1, "do not quote Sf-AC
  numbers"); :data:`NOT_PUBLISHED` says so.
- SRPO AntMaze: the SRPO paper's table and the BDPO paper's copy of it disagree and the spec
  marks which is authoritative as unverified (``srpo.md`` §7).
- CQL and the diffusion baselines (SfBC, IDQL, QGPO, ...): not algorithms of this library.

Sums recomputed from the values below are checked against the specs' recomputed sums in
``tests/test_report.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLAIMS",
    "NOT_PUBLISHED",
    "PUBLISHED",
    "Claim",
    "PublishedScore",
    "published_for",
    "published_order",
]


@dataclass(frozen=True)
class PublishedScore:
    """One published number: ``score`` (± ``std`` where the paper prints it) of ``column`` on the
    D4RL task ``task`` (e.g. ``hopper-medium``) at ``d4rl_version``."""

    algo: str  # this library's ``algo`` config value the number is compared with
    column: str  # the paper's column name, e.g. "IQL", "XQL-C"
    task: str
    score: float
    std: float | None
    d4rl_version: str  # "v2" (locomotion) or "v0" (AntMaze)
    paper_table: str  # where the paper prints it
    spec: str  # where we transcribed it from
    unverified: bool = False  # the spec tags the number [U]


_LOCOMOTION = (
    "halfcheetah-medium",
    "hopper-medium",
    "walker2d-medium",
    "halfcheetah-medium-replay",
    "hopper-medium-replay",
    "walker2d-medium-replay",
    "halfcheetah-medium-expert",
    "hopper-medium-expert",
    "walker2d-medium-expert",
)
_ANTMAZE = (
    "antmaze-umaze",
    "antmaze-umaze-diverse",
    "antmaze-medium-play",
    "antmaze-medium-diverse",
    "antmaze-large-play",
    "antmaze-large-diverse",
)

_IQL_TABLE = "Kostrikov et al., IQL (ICLR 2022), Table 1"
_XQL_TABLE = "Garg et al., XQL (ICLR 2023), Table 1, as tabulated in LAMDA-RL/OfflineRL-Lib README"
_SQL_TABLE = "Xu et al., SQL (ICLR 2023), Table 1 (values not yet checked against the paper)"
_SRPO_TABLE = (
    "Chen et al., SRPO (ICLR 2024), Table 1, as in opendilab/GenerativeRL benchmark README"
)
_BDPO_TABLE = "Gao et al., BDPO (ICML 2025), Table 1 (mean ± std over 5 seeds)"


def _block(algo, column, tasks, values, *, version, table, spec, unverified=False):
    if len(tasks) != len(values):
        raise ValueError(f"{column}: {len(tasks)} tasks but {len(values)} values")
    out = []
    for task, value in zip(tasks, values):
        score, std = value if isinstance(value, tuple) else (value, None)
        out.append(PublishedScore(algo, column, task, score, std, version, table, spec, unverified))
    return out


# Rows in the order of the spec's tables: halfcheetah/hopper/walker2d × medium, medium-replay,
# medium-expert (srpo.md §7 lists medium-expert first; its values are reordered here to match).
PUBLISHED: tuple[PublishedScore, ...] = tuple(
    # docs/specs/baselines.md §6, "Reference D4RL scores": AWAC (re-run on -v2), TD3+BC and IQL are the
    # IQL paper's Table 1.
    _block(
        "awac",
        "AWAC",
        _LOCOMOTION,
        (43.5, 57.0, 72.4, 40.5, 37.2, 27.0, 42.8, 55.8, 74.5),
        version="v2",
        table=_IQL_TABLE + " (AWAC re-run on -v2)",
        spec="docs/specs/baselines.md §6",
    )
    + _block(
        "td3bc",
        "TD3+BC",
        _LOCOMOTION,
        (48.3, 59.3, 83.7, 44.6, 60.9, 81.8, 90.7, 98.0, 110.1),
        version="v2",
        table=_IQL_TABLE,
        spec="docs/specs/baselines.md §6",
    )
    + _block(
        "iql",
        "IQL",
        _LOCOMOTION,
        (47.4, 66.3, 78.3, 44.2, 94.7, 73.9, 86.7, 91.5, 109.6),
        version="v2",
        table=_IQL_TABLE,
        spec="docs/specs/baselines.md §6",
    )
    # docs/specs/baselines.md §6, the paragraph after the table: AntMaze (-v0), IQL.
    + _block(
        "iql",
        "IQL",
        _ANTMAZE,
        (87.5, 62.2, 71.2, 70.0, 39.6, 47.5),
        version="v0",
        table=_IQL_TABLE,
        spec="docs/specs/baselines.md §6",
    )
    # docs/specs/baselines.md §6: SQL is tagged [U] there.
    + _block(
        "sql",
        "SQL",
        _LOCOMOTION,
        (48.3, 75.5, 84.2, 44.8, 99.7, 81.2, 94.0, 111.8, 110.0),
        version="v2",
        table=_SQL_TABLE,
        spec="docs/specs/baselines.md §6",
        unverified=True,
    )
    # docs/specs/baselines.md §6: XQL-C ("consistent" hyper-parameters, our torchrl_sym/configs/xql.yaml defaults)
    # and XQL-T (per-dataset tuned, our torchrl_sym/configs/tasks/xql/*.yaml).
    + _block(
        "xql",
        "XQL-C",
        _LOCOMOTION,
        (47.7, 71.1, 81.5, 44.8, 97.3, 75.9, 89.8, 107.1, 110.1),
        version="v2",
        table=_XQL_TABLE,
        spec="docs/specs/baselines.md §6",
    )
    + _block(
        "xql",
        "XQL-T",
        _LOCOMOTION,
        (48.3, 74.2, 84.2, 45.2, 100.7, 82.2, 94.2, 111.2, 112.7),
        version="v2",
        table=_XQL_TABLE,
        spec="docs/specs/baselines.md §6",
    )
    # docs/specs/srpo.md §7 (SRPO column; the BDPO paper's Table 1 prints the same locomotion values).
    + _block(
        "srpo",
        "SRPO",
        _LOCOMOTION,
        (60.4, 95.5, 84.4, 51.4, 101.2, 84.6, 92.2, 100.1, 114.0),
        version="v2",
        table=_SRPO_TABLE,
        spec="docs/specs/srpo.md §7",
    )
    # docs/specs/bdpo.md §7 (BDPO column).
    + _block(
        "bdpo",
        "BDPO",
        _LOCOMOTION,
        (
            (71.2, 0.9),
            (100.6, 0.7),
            (93.4, 0.5),
            (58.9, 0.9),
            (101.4, 0.5),
            (95.5, 1.6),
            (108.7, 0.9),
            (111.3, 0.2),
            (115.6, 0.4),
        ),
        version="v2",
        table=_BDPO_TABLE,
        spec="docs/specs/bdpo.md §7",
    )
    + _block(
        "bdpo",
        "BDPO",
        _ANTMAZE,
        ((98.4, 1.5), (83.0, 12.4), (92.0, 2.9), (93.2, 2.8), (69.0, 8.0), (84.0, 3.2)),
        version="v0",
        table=_BDPO_TABLE,
        spec="docs/specs/bdpo.md §7",
    )
)

NOT_PUBLISHED: dict[str, str] = {
    "sfac": "Sf-AC publishes no per-task D4RL table we can cite (docs/specs/sfac.md §1)",
}
"""Algorithms of this library without published per-task numbers, and why."""


def published_for(algo: str, task: str) -> list[PublishedScore]:
    """The published scores of ``algo`` (our config's ``algo``) on the D4RL task ``task``
    (``hopper-medium``), in transcription order; ``[]`` if none."""
    return [p for p in PUBLISHED if p.algo == algo and p.task == task]


def published_order(algo: str, other: str, task: str) -> int:
    """``+1`` when every published column of ``algo`` on ``task`` is above every column of
    ``other``, ``-1`` when every one is below, ``0`` when either has no number there or the
    columns disagree (e.g. one of XQL-C/XQL-T above, the other below)."""
    ours, theirs = published_for(algo, task), published_for(other, task)
    signs = {(a.score > b.score) - (a.score < b.score) for a in ours for b in theirs}
    return signs.pop() if len(signs) == 1 else 0


@dataclass(frozen=True)
class Claim:
    """A comparative claim of a paper that runs of this library can test: ``algo`` against each
    algorithm in ``against``, on every dataset where both have runs.

    ``kind``:

    - ``"not_below"``: ``algo`` is not below the other (Sf-AC's claim of no per-environment
      failure); contradicted when the 95% CI of the difference lies below zero;
    - ``"published_order"``: the order of the two algorithms' published scores on the task
      (:func:`published_order`); contradicted when the CI lies on the other side of zero. Tasks
      without a published order for the pair are skipped.
    """

    algo: str
    against: tuple[str, ...]
    kind: str
    statement: str
    source: str


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "sfac",
        ("iql", "sql", "xql", "awac"),
        "not_below",
        "Sf-AC avoids the per-environment failures of IQL, SQL, XQL and AWAC: on no dataset is it "
        "below them",
        "Zhu et al., arXiv 2508.04225, abstract; docs/specs/sfac.md §1 item 5",
    ),
    Claim(
        "srpo",
        ("iql", "sql", "xql"),
        "published_order",
        "SRPO's published D4RL score against the baseline's on the same task",
        "Chen et al., SRPO (ICLR 2024), Table 1 (docs/specs/srpo.md §7), and the baselines' "
        "tables (docs/specs/baselines.md §6)",
    ),
    Claim(
        "bdpo",
        ("iql", "sql", "xql", "srpo"),
        "published_order",
        "BDPO's published D4RL score against the other algorithm's on the same task",
        "Gao et al., BDPO (ICML 2025), Table 1 (docs/specs/bdpo.md §7), and the other papers' "
        "tables (docs/specs/baselines.md §6, docs/specs/srpo.md §7)",
    ),
)
"""The papers' comparative claims the results page tests against our runs (its "claims"
section). Sf-AC publishes no numbers, so its claim is its abstract's; SRPO's and BDPO's are the
orders of the published tables."""
