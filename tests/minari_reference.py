"""A Minari dataset read with minari itself: the reference the data layer's tests compare to."""

from __future__ import annotations

import numpy as np


def minari_reference(dataset_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(columns, returns)``: every transition's ``obs``, ``next_obs``, ``act``, ``rew``,
    ``term``, ``trunc`` in episode order, and each episode's summed reward."""
    import minari

    cols = {k: [] for k in ("obs", "next_obs", "act", "rew", "term", "trunc")}
    returns = []
    for ep in minari.load_dataset(dataset_id).iterate_episodes():
        cols["obs"].append(ep.observations[:-1])
        cols["next_obs"].append(ep.observations[1:])
        cols["act"].append(ep.actions)
        cols["rew"].append(ep.rewards)
        cols["term"].append(ep.terminations)
        cols["trunc"].append(ep.truncations)
        returns.append(float(np.sum(ep.rewards)))
    return {k: np.concatenate(v) for k, v in cols.items()}, np.asarray(returns)
