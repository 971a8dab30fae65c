"""D4RL normalized scores (docs/specs/baselines.md §0 and §7 test 1)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from torchrl_sym.data.scores import (
    D4RL_REF_SCORES,
    ReferenceScoresError,
    env_family,
    normalized_score,
    reference_scores,
)

SPELLINGS = {
    "halfcheetah": [
        "halfcheetah",
        "HalfCheetah-v5",
        "HalfCheetah-v2",
        "halfcheetah-medium-v2",
        "halfcheetah-medium-replay-v2",
        "mujoco/halfcheetah/medium-v0",
        "torchrl_sym/halfcheetah/medium-v0",
        "half_cheetah",
        "/x/y/halfcheetah-medium-expert-v2.hdf5",
    ],
    "hopper": [
        "hopper",
        "Hopper-v5",
        "Hopper-v2",
        "hopper-medium-v2",
        "hopper-medium-replay-v2",
        "mujoco/hopper/medium-v0",
        "torchrl_sym/hopper/medium-v0",
        "/x/y/hopper-expert-v2.hdf5",
    ],
    "walker2d": [
        "walker2d",
        "Walker2d-v5",
        "Walker2d-v2",
        "walker2d-medium-v2",
        "walker2d-medium-replay-v2",
        "mujoco/walker2d/medium-v0",
        "torchrl_sym/walker2d/medium-v0",
        "/x/y/walker2d-medium-expert-v2.hdf5",
    ],
    "ant": [
        "ant",
        "Ant-v5",
        "Ant-v2",
        "ant-medium-v2",
        "ant-medium-replay-v2",
        "mujoco/ant/medium-v0",
        "torchrl_sym/ant/medium-v0",
        "/x/y/ant-random-v2.hdf5",
    ],
}
ALL_SPELLINGS = [(family, name) for family, names in SPELLINGS.items() for name in names]
# torchrl_sym/... and mujoco/... datasets define their own references, never D4RL's constants
# (test_generated_ids_use_the_shipped_cards, test_mujoco_ids_not_on_disk_raise).
OWN_REFS = ("torchrl_sym/", "mujoco/")
D4RL_SPELLINGS = [(f, name) for f, name in ALL_SPELLINGS if not name.startswith(OWN_REFS)]
ZERO_RETURN_SCORE = {
    "halfcheetah": 2.2567,
    "hopper": 0.6229,
    "walker2d": -0.0355,
    "ant": 7.7426,
}


@pytest.fixture(autouse=True)
def _isolated_minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # String lookups consult the local Minari root; keep it empty and out of ~/.minari.
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def test_constants() -> None:
    assert D4RL_REF_SCORES == {
        "halfcheetah": (-280.178953, 12135.0),
        "hopper": (-20.272305, 3234.3),
        "walker2d": (1.629008, 4592.3),
        "ant": (-325.6, 3879.7),
    }


@pytest.mark.parametrize(("family", "name"), ALL_SPELLINGS)
def test_env_family_of_every_spelling(family: str, name: str) -> None:
    assert env_family(name) == family


@pytest.mark.parametrize(("family", "name"), D4RL_SPELLINGS)
def test_env_family_and_reference_points(family: str, name: str) -> None:
    assert env_family(name) == family
    r_min, r_max = D4RL_REF_SCORES[family]
    assert reference_scores(name) == (r_min, r_max)
    assert normalized_score(name, r_max) == pytest.approx(100.0, abs=1e-12)
    assert normalized_score(name, r_min) == pytest.approx(0.0, abs=1e-12)
    assert normalized_score(name, 0.0) == pytest.approx(ZERO_RETURN_SCORE[family], abs=1e-4)
    assert normalized_score(name, 0) == pytest.approx(ZERO_RETURN_SCORE[family], abs=1e-4)


def test_env_family_accepts_path_objects() -> None:
    # Only the file name counts: the directory names an unrelated family.
    assert env_family(Path("/data/ant/walker2d-medium-v2.hdf5")) == "walker2d"
    assert env_family("/data/ant/walker2d-medium-v2.hdf5") == "walker2d"


def test_hand_computed_value() -> None:
    # hopper: 100 · (1000 + 20.272305) / (3234.3 + 20.272305) = 102027.2305 / 3254.572305
    assert normalized_score("hopper-medium-v2", 1000.0) == pytest.approx(31.348890, abs=1e-6)


def test_return_types() -> None:
    lo, hi = D4RL_REF_SCORES["walker2d"]
    scalar = normalized_score("walker2d", 2000)
    assert type(scalar) is float

    array = normalized_score("walker2d", np.array([lo, hi, np.nan]))
    assert isinstance(array, np.ndarray) and array.dtype == np.float64
    np.testing.assert_allclose(array[:2], [0.0, 100.0], atol=1e-10)
    assert np.isnan(array[2])

    ints = normalized_score("walker2d", np.array([0, 0]))
    np.testing.assert_allclose(ints, [-0.0355, -0.0355], atol=1e-4)

    listed = normalized_score("walker2d", [lo, hi])
    np.testing.assert_allclose(listed, [0.0, 100.0], atol=1e-10)

    for dtype in (torch.float32, torch.float64):
        tensor = normalized_score("walker2d", torch.tensor([lo, hi, math.nan], dtype=dtype))
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == dtype
        assert tensor.device == torch.device("cpu")
        torch.testing.assert_close(tensor[:2], torch.tensor([0.0, 100.0], dtype=dtype))
        assert torch.isnan(tensor[2])

    int_tensor = normalized_score("walker2d", torch.tensor([0]))
    assert int_tensor.dtype == torch.get_default_dtype()
    assert int_tensor.item() == pytest.approx(-0.0355, abs=1e-4)

    assert math.isnan(normalized_score("walker2d", math.nan))


def test_tensor_grad_flows() -> None:
    returns = torch.tensor([100.0], requires_grad=True)
    normalized_score("hopper", returns).sum().backward()
    lo, hi = D4RL_REF_SCORES["hopper"]
    assert returns.grad.item() == pytest.approx(100 / (hi - lo), rel=1e-6)


def test_object_reference_scores_override_constants() -> None:
    info = SimpleNamespace(ref_min_score=-10.0, ref_max_score=30.0, env_id="hopper")
    assert reference_scores(info) == (-10.0, 30.0)
    assert normalized_score(info, 10.0) == 50.0
    # Through .info (e.g. a replay buffer carrying our dataset info).
    buffer = SimpleNamespace(info=info)
    assert normalized_score(buffer, 10.0) == 50.0
    # A mapping such as Minari metadata.
    assert normalized_score({"ref_min_score": 0, "ref_max_score": 4}, 1.0) == 25.0


def test_object_without_refs_falls_back_to_its_id() -> None:
    partial = SimpleNamespace(ref_min_score=None, ref_max_score=5.0, dataset_id="hopper-medium-v2")
    assert reference_scores(partial) == D4RL_REF_SCORES["hopper"]
    assert reference_scores(SimpleNamespace(env_id="Ant-v5")) == D4RL_REF_SCORES["ant"]
    file_only = SimpleNamespace(dataset_id="/data/my_run.hdf5", env_id="Walker2d-v5")
    assert reference_scores(file_only) == D4RL_REF_SCORES["walker2d"]
    with pytest.raises(ValueError, match=r"'/data/my_run\.hdf5' matches no known"):
        reference_scores(SimpleNamespace(dataset_id="/data/my_run.hdf5", env_id=None))
    buffer = SimpleNamespace(info=SimpleNamespace(ref_min_score=None, dataset_id="Ant-v5"))
    assert reference_scores(buffer) == D4RL_REF_SCORES["ant"]
    no_refs_info = SimpleNamespace(info=SimpleNamespace(), env_id="Hopper-v5")
    assert reference_scores(no_refs_info) == D4RL_REF_SCORES["hopper"]


@pytest.mark.parametrize("name", ["pendulum-v1", "Humanoid-v5", "plant", "giant-v0", ""])
def test_unknown_name_is_named_in_the_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"matches no known environment families") as info:
        normalized_score(name, 1.0)
    assert repr(name) in str(info.value)
    assert "halfcheetah, hopper, walker2d, ant" in str(info.value)


def test_ambiguous_name() -> None:
    with pytest.raises(ValueError, match=r"'hopper-ant' matches several \(hopper, ant\)"):
        env_family("hopper-ant")


@pytest.mark.parametrize("name", ["antmaze-umaze-v2", "D4RL/antmaze/umaze-v1", "AntMaze_UMaze-v4"])
def test_antmaze_is_not_ant(name: str) -> None:
    with pytest.raises(ValueError, match="AntMaze") as info:
        reference_scores(name)
    assert repr(name) in str(info.value)
    assert "ref_min_score" in str(info.value)


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="Cannot find reference scores for 3"):
        reference_scores(3)
    with pytest.raises(ValueError, match=r"ref_max_score > ref_min_score, got \(5.0, 5.0\)"):
        normalized_score(SimpleNamespace(ref_min_score=5, ref_max_score=5), 1.0)


def _make_tiny_minari_dataset(dataset_id: str, **refs: float):
    minari = pytest.importorskip("minari")
    from minari.data_collector import EpisodeBuffer

    steps = 3
    buffer = EpisodeBuffer(
        id=0,
        observations=np.zeros((steps + 1, 3), dtype=np.float32),
        actions=np.zeros((steps, 1), dtype=np.float32),
        rewards=[1.0] * steps,
        terminations=[False, False, True],
        truncations=[False] * steps,
        infos={},
    )
    return minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=[buffer],
        env="Pendulum-v1",
        eval_env="Pendulum-v1",
        algorithm_name="none",
        author="tests",
        author_email="tests@example.invalid",
        code_permalink="https://example.invalid/tests",
        description="tiny test dataset",
        **refs,
    )


def test_local_minari_dataset_reference_scores() -> None:
    dataset = _make_tiny_minari_dataset(
        "test/pointless/tiny-v0", ref_min_score=-10.0, ref_max_score=30.0
    )
    assert normalized_score("test/pointless/tiny-v0", 10.0) == 50.0
    assert reference_scores(dataset) == (-10.0, 30.0)
    assert normalized_score(dataset, np.array([-10.0, 30.0])).tolist() == [0.0, 100.0]


def test_local_minari_dataset_without_refs_falls_back_to_family() -> None:
    dataset = _make_tiny_minari_dataset("test/hopper/norefs-v0")
    assert reference_scores("test/hopper/norefs-v0") == D4RL_REF_SCORES["hopper"]
    assert reference_scores(dataset) == D4RL_REF_SCORES["hopper"]


# ------------------------------------------------- ids whose datasets define their own references


def _card_mean(family: str, kind: str, version: int = 0) -> float:
    from torchrl_sym.data.policies import load_card

    return float(load_card(family, kind, version)["return_mean"])


def _shipped_versions() -> list[tuple[str, int]]:
    from torchrl_sym.data.policies import CARD_SETS, available_policies

    return [
        (family, version)
        for version in CARD_SETS
        for family in ("hopper", "halfcheetah", "walker2d")
        if (family, "expert") in available_policies(version)
    ]


@pytest.mark.parametrize(("family", "version"), _shipped_versions())
@pytest.mark.parametrize("kind", ["random", "medium", "medium-replay", "expert", "medium-expert"])
def test_generated_ids_use_the_shipped_cards(family: str, version: int, kind: str) -> None:
    from torchrl_sym.data import generate

    dataset_id = f"torchrl_sym/{family}/{kind}-v{version}"
    want = (_card_mean(family, "random", version), _card_mean(family, "expert", version))
    # not on disk (the Minari root is empty): the version's cards, exactly what generate records
    assert reference_scores(dataset_id) == want == generate._reference_returns(family, version)
    assert want != D4RL_REF_SCORES[family]
    assert normalized_score(dataset_id, want[1]) == pytest.approx(100.0, abs=1e-12)
    assert normalized_score(dataset_id, want[0]) == pytest.approx(0.0, abs=1e-12)


def test_hopper_expert_v0_is_not_d4rl() -> None:
    lo, hi = reference_scores("torchrl_sym/hopper/expert-v0")
    assert (round(lo, 1), round(hi, 1)) == (19.8, 1653.1)
    # also through objects that only carry the id (the info of a dataset without recorded refs)
    info = SimpleNamespace(
        ref_min_score=None,
        ref_max_score=None,
        dataset_id="torchrl_sym/hopper/expert-v0",
        env_id="Hopper-v5",
    )
    assert reference_scores(info) == (lo, hi)
    storage = SimpleNamespace(metadata={"dataset_id": "torchrl_sym/hopper/expert-v0"})
    assert reference_scores(SimpleNamespace(storage=storage)) == (lo, hi)


def test_a_version_maps_to_its_card_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from torchrl_sym.data import policies

    with pytest.raises(ReferenceScoresError) as err:
        reference_scores("torchrl_sym/hopper/medium-v7")
    msg = str(err.value)
    assert "'torchrl_sym/hopper/medium-v7'" in msg and "v7" in msg and "ref_min_score" in msg
    # a card set for v7 (its own files) serves v7 ids; v0 keeps its cards
    for kind, mean in (("random", 5.0), ("expert", 105.0)):
        (tmp_path / f"hopper_{kind}_v7.json").write_text(json.dumps({"return_mean": mean}))
    monkeypatch.setitem(
        policies.CARD_SETS,
        7,
        {k: str(tmp_path / f"{{family}}_{k}_v7.json") for k in ("random", "expert")},
    )
    assert reference_scores("torchrl_sym/hopper/medium-v7") == (5.0, 105.0)
    assert normalized_score("torchrl_sym/hopper/expert-v7", 55.0) == 50.0
    assert reference_scores("torchrl_sym/hopper/medium-v0")[1] == _card_mean("hopper", "expert")
    with pytest.raises(ReferenceScoresError, match="walker2d"):
        reference_scores("torchrl_sym/walker2d/medium-v7")  # no walker2d card in that set


@pytest.mark.parametrize("name", ["torchrl_sym/ant/medium-v0", "torchrl_sym/hopper/medim-v0"])
def test_torchrl_sym_ids_without_cards_raise(name: str) -> None:
    with pytest.raises(ReferenceScoresError) as err:
        normalized_score(name, 1.0)
    msg = str(err.value)
    assert repr(name) in msg and "not on disk" in msg
    assert "{'ref_min_score': R_min, 'ref_max_score': R_max}" in msg


@pytest.mark.parametrize("name", ["mujoco/hopper/medium-v0", "mujoco/halfcheetah/expert-v0"])
def test_mujoco_ids_not_on_disk_raise(name: str) -> None:
    with pytest.raises(ReferenceScoresError) as err:
        normalized_score(name, 1.0)
    msg = str(err.value)
    assert repr(name) in msg and "not on disk" in msg and "minari.download_dataset" in msg
    assert "ref_min_score" in msg
    assert isinstance(err.value, ValueError)
    # no fallback to the env's D4RL constants through an object's env_id either
    info = SimpleNamespace(ref_min_score=None, dataset_id=name, env_id="Hopper-v5")
    with pytest.raises(ReferenceScoresError):
        reference_scores(info)
    # the way out the message names: the references themselves
    assert normalized_score({"ref_min_score": 0.0, "ref_max_score": 10.0}, 5.0) == 50.0


def test_local_mujoco_dataset_uses_its_recorded_references() -> None:
    _make_tiny_minari_dataset("mujoco/hopper/tiny-v0", ref_min_score=-1.0, ref_max_score=3.0)
    assert reference_scores("mujoco/hopper/tiny-v0") == (-1.0, 3.0)
    _make_tiny_minari_dataset("mujoco/hopper/tinynorefs-v0")
    with pytest.raises(ReferenceScoresError, match="records no ref_min_score"):
        reference_scores("mujoco/hopper/tinynorefs-v0")
