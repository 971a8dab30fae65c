"""Test isolation: no network, and every dataset or cache lives in a throwaway directory."""

import os
import shutil
import tempfile

import pytest

# Set before any test module imports minari or torchrl_sym, so nothing reads the user's ~/.minari
# or ~/.cache, and no code path may try the network.
_TMP = tempfile.mkdtemp(prefix="torchrl_sym_tests_")
os.environ["TORCHRL_SYM_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MINARI_DATASETS_PATH"] = os.path.join(_TMP, "minari")
os.environ["TORCHRL_SYM_DATA"] = os.path.join(_TMP, "cache")
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def hopper_minari_id():
    """A small local Minari dataset of real random-policy Hopper-v5 rollouts (seed 0)."""
    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    dataset_id = "test/hopper/random-v0"
    episodes = rollout_episodes("Hopper-v5", None, 1500, seed=0, progress=False)
    write_minari_dataset(
        dataset_id, episodes, env_id="Hopper-v5", ref_min_score=-20.0, ref_max_score=3000.0
    )
    return dataset_id


RECIPE_DATASET = "test/hopper/recipe-v0"


@pytest.fixture(scope="session")
def recipe_dataset():
    """A small local Minari dataset (2,000 random-policy Hopper-v5 transitions) for recipe runs."""
    import minari

    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    if RECIPE_DATASET not in minari.list_local_datasets():
        episodes = rollout_episodes("Hopper-v5", None, 2000, seed=0, progress=False)
        write_minari_dataset(RECIPE_DATASET, episodes, env_id="Hopper-v5")
    return RECIPE_DATASET
