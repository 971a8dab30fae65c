"""Behavior policies shipped with the package, and their cards.

For each env family (hopper, halfcheetah, walker2d) this folder holds

* ``<family>_expert.pt`` and ``<family>_medium.pt``: SAC actor weights (``make_tanh_gaussian_actor``)
  with the architecture needed to rebuild them;
* ``<family>_expert.json``, ``<family>_medium.json``: the card (env, SAC training steps, mean and
  std of the deterministic return over 20 episodes, seeds, the commands that reproduce it);
* ``<family>_random.json``: the uniform random policy's return statistics (the datasets'
  ``ref_min_score``);
* ``<family>_medium_replay.npz``: the SAC replay buffer up to the medium checkpoint (episodes in
  collection order), the source of the medium-replay dataset.

They are built from ``recipes/sac.py`` runs by :mod:`torchrl_sym.recipes.build_policies`.

Dataset versions: the files above, in this folder, are the policies of the ``-v0`` datasets (SAC on
a CPU budget); ``v1/`` holds those of the ``-v1`` datasets (CrossQ experts near D4RL's strength, a
slower CrossQ run for medium and medium-replay). Every function takes ``version`` (default
:data:`CURRENT_VERSION`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CURRENT_VERSION",
    "POLICY_DIR",
    "POLICY_KINDS",
    "BehaviorPolicy",
    "available_policies",
    "load_behavior_policy",
    "load_card",
    "load_medium_replay",
    "policy_dir",
    "reference_returns",
]

POLICY_DIR = Path(__file__).resolve().parent
POLICY_KINDS = ("medium", "expert")
CURRENT_VERSION = 1  # the version of the datasets recipes use by default
# Dataset version -> the card file of each policy kind, "{family}" filled in. The reference scores
# of torchrl_sym/<family>/<kind>-v<version> come from its version's random and expert cards; a
# dataset version built from other policies adds its own entry here.
CARD_SETS: dict[int, dict[str, str]] = {
    0: {
        "random": "{family}_random.json",
        "medium": "{family}_medium.json",
        "expert": "{family}_expert.json",
    },
    1: {
        "random": "v1/{family}_random.json",
        "medium": "v1/{family}_medium.json",
        "expert": "v1/{family}_expert.json",
    },
}


def policy_dir(version: int = CURRENT_VERSION) -> Path:
    """The folder of dataset version ``version``'s policies (v0: this package folder)."""
    if version not in CARD_SETS:
        raise FileNotFoundError(
            f"No behavior policies for dataset version v{version}; versions: "
            f"{', '.join(f'v{v}' for v in sorted(CARD_SETS))}."
        )
    return POLICY_DIR if version == 0 else POLICY_DIR / f"v{version}"


def _missing_message(family: str, what: str, version: int) -> str:
    shipped = available_policies(version)
    hint = (
        f" The v{version} policies of {family} are not trained yet; use dataset version v0 "
        f"(torchrl_sym/{family}/<kind>-v0) meanwhile."
        if version != 0 and not any(f == family for f, _ in shipped)
        else ""
    )
    return (
        f"No {what} for {family} in dataset version v{version}; shipped v{version} policies: "
        f"{shipped}.{hint}"
    )


def _family(env: str) -> str:
    from torchrl_sym.envs import ENV_IDS, resolve_env_id

    env_id = resolve_env_id(env)
    for family, known in ENV_IDS.items():
        if known == env_id:
            return family
    raise ValueError(
        f"No shipped behavior policies for env {env!r}; available: {available_policies()}."
    )


def available_policies(version: int = 0) -> list[tuple[str, str]]:
    """``(family, kind)`` pairs with a shipped actor in dataset version ``version``."""
    out = []
    folder = POLICY_DIR if version == 0 else POLICY_DIR / f"v{version}"
    for path in sorted(folder.glob("*_*.pt")):
        family, kind = path.stem.split("_", 1)
        out.append((family, kind))
    return out


def _card_path(family: str, kind: str, version: int) -> Path:
    if version not in CARD_SETS:
        raise FileNotFoundError(
            f"No policy cards for dataset version v{version}; card sets exist for "
            f"{', '.join(f'v{v}' for v in sorted(CARD_SETS))} (CARD_SETS in {POLICY_DIR})."
        )
    names = CARD_SETS[version]
    if kind not in names:
        raise FileNotFoundError(
            f"The v{version} card set has no {kind!r} card; it has {sorted(names)}."
        )
    return POLICY_DIR / names[kind].format(family=family)


def load_card(env: str, kind: str, version: int = 0) -> dict:
    """The card of a shipped policy (``kind`` in medium, expert, random) of dataset ``version``."""
    family = _family(env)
    path = _card_path(family, kind, version)
    if not path.is_file() and version != 0:
        raise FileNotFoundError(_missing_message(family, f"{kind} card", version))
    if not path.is_file():
        raise FileNotFoundError(
            f"No card for the {kind} policy of {family} in {POLICY_DIR}; available policies: "
            f"{available_policies()}."
        )
    return json.loads(path.read_text())


def reference_returns(env: str, version: int = 0) -> tuple[float, float]:
    """``(ref_min_score, ref_max_score)`` of ``torchrl_sym/<env>/<kind>-v<version>``.

    The random card's ``return_mean`` and the expert card's ``return_mean`` of that version's card
    set: the values :mod:`torchrl_sym.data.generate` records in the datasets it writes.

    Raises:
        FileNotFoundError: the version has no card set, or the family has no random/expert card.
    """
    return (
        float(load_card(env, "random", version)["return_mean"]),
        float(load_card(env, "expert", version)["return_mean"]),
    )


class BehaviorPolicy:
    """A shipped SAC actor that acts on numpy observations.

    ``act(obs, generator)`` samples ``a = tanh(μ(s) + σ(s) · ε)`` with ``ε`` drawn from ``generator``
    (so a rollout is reproducible from a seed); ``deterministic=True`` returns ``tanh(μ(s))``.
    """

    def __init__(self, actor, card: dict):
        self.actor = actor.eval()
        self.card = card
        # observation -> (loc, scale) as a plain nn.Module: rollouts call it once per step, and the
        # TensorDict wrappers cost more than the MLP at these sizes
        self._params_net = actor.module[0].module

    @torch.no_grad()
    def act(
        self,
        observation: np.ndarray,
        generator: torch.Generator | None = None,
        *,
        deterministic: bool = False,
    ) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32)
        u, scale = self._params_net(obs)
        if not deterministic:
            u = u + scale * torch.randn(u.shape, generator=generator)
        return torch.tanh(u).numpy()


def load_behavior_policy(env: str, kind: str, version: int = 0) -> BehaviorPolicy:
    """Load the shipped ``kind`` ("medium" or "expert") policy of ``env`` (dataset ``version``)."""
    from torchrl_sym.models import make_tanh_gaussian_actor

    if kind not in POLICY_KINDS:
        raise ValueError(f"kind must be one of {POLICY_KINDS}, got {kind!r}.")
    family = _family(env)
    path = policy_dir(version) / f"{family}_{kind}.pt"
    if not path.is_file() and version != 0:
        raise FileNotFoundError(_missing_message(family, f"{kind} policy", version))
    if not path.is_file():
        raise FileNotFoundError(
            f"No shipped {kind} policy for {family} ({path} is missing); available: "
            f"{available_policies()}. Build one with recipes/sac.py and "
            "python -m torchrl_sym.recipes.build_policies."
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    actor = make_tanh_gaussian_actor(
        int(blob["obs_dim"]), int(blob["act_dim"]), [int(h) for h in blob["hidden"]]
    )
    actor.load_state_dict(blob["state_dict"])
    return BehaviorPolicy(actor, load_card(family, kind, version))


def load_medium_replay(env: str, version: int = 0) -> list[dict[str, np.ndarray]]:
    """The SAC replay episodes up to the medium checkpoint, as Minari-style episode dicts.

    Each dict has ``observations [T + 1, S]``, ``actions [T, A]``, ``rewards [T]``,
    ``terminations [T]``, ``truncations [T]``.
    """
    family = _family(env)
    path = policy_dir(version) / f"{family}_medium_replay.npz"
    if not path.is_file() and version != 0:
        raise FileNotFoundError(_missing_message(family, "medium-replay data", version))
    if not path.is_file():
        raise FileNotFoundError(f"No medium-replay data for {family} ({path} is missing).")
    with np.load(path) as npz:
        # read each array once: NpzFile decompresses the whole array on every item access
        z = {key: npz[key] for key in npz.files}
    obs_ends = np.cumsum(z["episode_lengths"] + 1)
    act_ends = np.cumsum(z["episode_lengths"])
    episodes = []
    for i, (oe, ae) in enumerate(zip(obs_ends, act_ends)):
        t = int(z["episode_lengths"][i])
        episodes.append(
            {
                "observations": z["observations"][oe - t - 1 : oe],
                "actions": z["actions"][ae - t : ae],
                "rewards": z["rewards"][ae - t : ae],
                "terminations": z["terminations"][ae - t : ae],
                "truncations": z["truncations"][ae - t : ae],
            }
        )
    return episodes
