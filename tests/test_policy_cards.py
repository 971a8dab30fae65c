"""The shipped v1 behavior policies meet their targets (cards), and the cards are true (slow)."""

import numpy as np
import pytest

from torchrl_sym.data.generate import ENV_FAMILIES
from torchrl_sym.data.policies import available_policies, load_behavior_policy, load_card

# the expert's deterministic return over 20 fresh episodes (about 75% of D4RL's expert return)
V1_EXPERT_TARGETS = {"hopper": 2_400.0, "halfcheetah": 9_000.0, "walker2d": 3_400.0}
V1_MEDIUM_SHARE = (0.25, 0.45)  # the medium's sampled return / the expert's return
MIN_MEDIUM_REPLAY = 100_000

V1 = sorted({family for family, _ in available_policies(1)})


def test_v1_targets_are_the_documented_ones():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_datasets_doc.py"
    spec = importlib.util.spec_from_file_location("make_datasets_doc", path)
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    assert doc.V1_EXPERT_TARGETS == V1_EXPERT_TARGETS
    assert doc.V1_MEDIUM_SHARE == V1_MEDIUM_SHARE and doc.MIN_MEDIUM_REPLAY == MIN_MEDIUM_REPLAY
    assert V1 == sorted(ENV_FAMILIES)  # every env family has its v1 policies


@pytest.mark.parametrize("family", V1)
def test_shipped_v1_cards_meet_the_targets(family):
    from torchrl_sym.data.policies import load_medium_replay

    expert, medium = load_card(family, "expert", 1), load_card(family, "medium", 1)
    assert expert["episodes"] >= 20
    assert expert["return_mean"] >= V1_EXPERT_TARGETS[family], (
        f"{family} v1 expert: {expert['return_mean']:.0f} < {V1_EXPERT_TARGETS[family]:.0f}"
    )
    share = medium["sampled_return_mean"] / expert["return_mean"]
    assert V1_MEDIUM_SHARE[0] <= share <= V1_MEDIUM_SHARE[1], f"{family} medium share {share:.2f}"
    replay = load_medium_replay(family, 1)
    transitions = sum(len(e["actions"]) for e in replay)
    assert transitions >= MIN_MEDIUM_REPLAY
    assert transitions == medium["training_env_steps"]  # every transition up to the snapshot


@pytest.mark.slow
@pytest.mark.parametrize("family", V1)
@pytest.mark.parametrize("kind", ["expert", "medium"])
def test_v1_cards_are_remeasured_from_the_shipped_weights(family, kind):
    """The card's deterministic and sampled returns, measured again from the weights with the
    card's seeds: equal within the noise of 20 episodes."""
    from torchrl_sym.recipes.build_policies import _evaluate

    card = load_card(family, kind, 1)
    policy = load_behavior_policy(family, kind, 1)
    for sampled, key in ((False, "return"), (True, "sampled_return")):
        mean, _ = _evaluate(
            card["env_id"], policy.actor, card["episodes"], sampled=sampled, seed=card["eval_seed"]
        )
        tolerance = 3 * card[f"{key}_std"] / np.sqrt(card["episodes"]) + 1e-6
        assert abs(mean - card[f"{key}_mean"]) <= max(tolerance, 0.02 * abs(card[f"{key}_mean"]))
