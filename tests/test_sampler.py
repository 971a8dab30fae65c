"""The offline buffer's packed sampler: batches are the dataset's rows, each epoch a permutation,
exact resume, and checkpoints of TorchRL's sampler still resume with it."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from torchrl_sym.data import make_offline_replay_buffer
from torchrl_sym.train.recipe import StackedBuffer


def _data(n: int = 50) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict(
        {
            "observation": torch.randn(n, 4, generator=g),
            "action": torch.rand(n, 2, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, 4, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.rand(n, 1, generator=g) < 0.1,
                "terminated": torch.rand(n, 1, generator=g) < 0.1,
            },
        },
        [n],
    )


def _buffer(batch: int = 8, seed: int = 0):
    return make_offline_replay_buffer(_data(), batch, seed=seed, env=None)


def test_batches_are_rows_of_the_data_each_epoch_a_permutation():
    rb = _buffer()
    data = rb.data
    seen = []
    for _ in range(6):  # 50 transitions, batches of 8: 6 per epoch, 2 dropped
        batch = rb.sample()
        index = rb._perm[rb._pos - 8 : rb._pos]
        for key in data.keys(True, True):
            assert torch.equal(batch[key], data[index][key]), key
            assert (
                batch[key].dtype == data[key].dtype and batch[key].shape[1:] == data[key].shape[1:]
            )
        seen.append(index)
    seen = torch.cat(seen)
    assert len(set(seen.tolist())) == 48  # without replacement within the epoch
    first_epoch = rb._perm.clone()
    rb.sample()  # the next epoch: a new permutation
    assert not torch.equal(rb._perm, first_epoch)


def test_resume_continues_the_same_stream():
    rb = _buffer(seed=3)
    for _ in range(4):
        rb.sample()
    state = rb.state_dict()
    expected = [rb.sample()["observation"] for _ in range(5)]  # crosses an epoch boundary
    again = _buffer(seed=99)
    again.load_state_dict(state)
    for want in expected:
        assert torch.equal(again.sample()["observation"], want)


def test_a_checkpoint_of_torchrls_sampler_resumes_with_it():
    """State written before the packed sampler (TorchRL's SamplerWithoutReplacement): the buffer
    continues that stream with TorchRL's sampler, exactly."""
    old = _buffer(seed=1)
    old._legacy = True  # behave as the buffer did before
    for _ in range(3):
        old.sample()
    state = old.state_dict()
    assert "sampler" in state and "format" not in state
    expected = [old.sample()["observation"] for _ in range(3)]
    resumed = _buffer(seed=7)
    resumed.load_state_dict(state)
    assert [torch.equal(resumed.sample()["observation"], w) for w in expected] == [True] * 3


def test_stacked_buffer_gathers_each_seeds_stream_at_once():
    base = _buffer(seed=0)
    seeds = [base.with_batch_size(8, seed=10 + k) for k in range(3)]
    assert all(b._packed is base._packed for b in seeds)  # one packed copy of the data
    stacked = StackedBuffer(seeds)
    singles = [_buffer(seed=10 + k) for k in range(3)]
    for _ in range(8):
        batch = stacked.sample()
        assert batch.batch_size == torch.Size([3, 8])
        for k, single in enumerate(singles):
            want = single.sample()
            for key in want.keys(True, True):
                assert torch.equal(batch[k][key], want[key]), key
