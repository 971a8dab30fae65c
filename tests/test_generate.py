"""Random-policy rollouts into local Minari datasets: determinism, atomic writes, the CLI."""

import minari
import numpy as np
import pytest

from torchrl_sym.data import generate as gen
from torchrl_sym.data import load_offline_dataset


def test_rollouts_are_deterministic_from_the_seed():
    a = gen.rollout_episodes("Hopper-v5", None, 400, seed=5, progress=False)
    b = gen.rollout_episodes("Hopper-v5", None, 400, seed=5, progress=False)
    c = gen.rollout_episodes("Hopper-v5", None, 400, seed=6, progress=False)
    assert gen.episodes_sha256(a) == gen.episodes_sha256(b) != gen.episodes_sha256(c)
    assert sum(len(ep.actions) for ep in a) == 400  # the last episode is cut at the budget
    for ep in a:
        assert ep.observations.shape == (len(ep.actions) + 1, 11)
        assert np.all(np.abs(ep.actions) <= 1.0)
    # every episode but the cut last one ends in a terminal (falling) or the time limit
    assert all(ep.terminations[-1] or ep.truncations[-1] for ep in a[:-1])


def test_generate_writes_a_loadable_minari_dataset(capsys):
    assert gen.main(["hopper", "random", "--transitions", "300", "--seed", "1"]) == 0
    dataset_id = capsys.readouterr().out.strip()
    assert dataset_id == "torchrl_sym/hopper/random-v0"
    ds = minari.load_dataset(dataset_id)
    assert ds.total_steps == 300 and ds.env_spec.id == "Hopper-v5"
    sha = gen.episodes_sha256(gen.rollout_episodes("Hopper-v5", None, 300, seed=1, progress=False))
    assert sha in ds.storage.metadata["description"]
    _, info = load_offline_dataset(dataset_id)
    assert info.num_transitions == 300 and info.env_id == "Hopper-v5"
    # a second call refuses to overwrite unless asked
    assert gen.main(["hopper", "random", "--transitions", "300"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert gen.main(["hopper", "random", "--transitions", "200", "--overwrite"]) == 0
    assert minari.load_dataset(dataset_id).total_steps == 200


def test_failed_write_leaves_no_dataset(monkeypatch):
    episodes = gen.rollout_episodes("Hopper-v5", None, 50, seed=0, progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        gen.write_minari_dataset("test/hopper/broken-v0", episodes, env_id="Hopper-v5")
    assert "test/hopper/broken-v0" not in minari.list_local_datasets()


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        gen.generate_dataset("hopper", "medium-ish", num_transitions=10)
    with pytest.raises(ValueError, match="num_transitions"):
        gen.rollout_episodes("Hopper-v5", None, 0)
    with pytest.raises(SystemExit):
        gen.main(["hopper", "expert-ish"])
