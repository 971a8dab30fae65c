"""Tests for torchrl_sym.train.trainer: offline losses driven by torchrl.trainers.Trainer."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.checkpoint import CheckpointError
from torchrl.data import (
    LazyTensorStorage,
    RandomSampler,
    SamplerWithoutReplacement,
    TensorDictReplayBuffer,
)
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import IQLLoss, LossModule, SoftUpdate
from torchrl.record.loggers import CSVLogger
from torchrl.trainers import LogScalar

from torchrl_sym.data import make_offline_replay_buffer
from torchrl_sym.train.trainer import OfflineTicker, SamplingState, make_offline_trainer

N, OBS, ACT, BATCH = 512, 3, 2, 32
TAU = 0.005


def ted_dataset(n: int = N, seed: int = 0) -> TensorDict:
    """Random TED transitions; observation[:, 0] is the row index, so batches can be traced."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS, generator=g)
    obs[:, 0] = torch.arange(n, dtype=torch.float32)
    obs[:, 0] /= n  # keep inputs O(1) for the networks; row = round(obs[:, 0] * n)
    flags = torch.zeros(n, 1, dtype=torch.bool)
    return TensorDict(
        {
            "observation": obs,
            "action": torch.rand(n, ACT, generator=g) * 2 - 1,
            ("next", "observation"): torch.randn(n, OBS, generator=g),
            ("next", "reward"): obs @ torch.tensor([[0.0], [1.0], [-2.0]]) + 0.3,
            ("next", "done"): flags.clone(),
            ("next", "terminated"): flags.clone(),
            ("next", "truncated"): flags.clone(),
        },
        batch_size=[n],
    )


def make_iql(seed: int = 0) -> IQLLoss:
    torch.manual_seed(seed)
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=OBS, out_features=2 * ACT, num_cells=[16]), NormalParamExtractor()
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
    )
    qvalue = ValueOperator(
        MLP(in_features=OBS + ACT, out_features=1, num_cells=[16]),
        in_keys=["observation", "action"],
    )
    value = ValueOperator(
        MLP(in_features=OBS, out_features=1, num_cells=[16]), in_keys=["observation"]
    )
    return IQLLoss(actor, qvalue, value, expectile=0.7, temperature=3.0, loss_function="l2")


def flat(params: TensorDictBase) -> torch.Tensor:
    """All leaves of a parameter TensorDict as one float64 vector, in sorted-key order."""
    params = params.detach().flatten_keys(".")
    return torch.cat([params[k].reshape(-1).double() for k in sorted(params.keys())])


def read_scalar_csv(path: Path) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(step), float(value)) for step, value in csv.reader(f)]


class QuadraticLoss(LossModule):
    """loss_a = w², loss_b = (w − 2)², plus a non-loss entry that must not be differentiated."""

    def __init__(self, w0: float = 3.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w0))
        self.batches: list[TensorDictBase] = []

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        self.batches.append(tensordict.detach().clone())
        return TensorDict(
            {
                "loss_a": self.w**2,
                "loss_b": (self.w - 2) ** 2,
                # Not detached on purpose: summing it would change the gradient by 1000.
                "w_times_1000": 1000 * self.w,
            },
            [],
        )


class LinearLoss(LossModule):
    """loss = 1000 w: gradient 1000 at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.0))

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        return TensorDict({"loss": 1000 * self.w}, [])


class RewardRegressionLoss(LossModule):
    """loss_mse = mean (f(s) − r)² with a linear f: the data's reward is linear in s."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(OBS, 1)

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        pred = self.net(tensordict["observation"])
        return TensorDict({"loss_mse": (pred - tensordict["next", "reward"]).pow(2).mean()}, [])


# ------------------------------------------------------------------------------------------------
# IQL end to end
# ------------------------------------------------------------------------------------------------


def test_iql_twenty_steps_one_optimizer_step_each_soft_targets_logs(tmp_path):
    steps, log_interval = 20, 5
    rb = make_offline_replay_buffer(ted_dataset(), BATCH, seed=0)
    stored_before = rb[:].clone()
    loss = make_iql()
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    logger = CSVLogger("iql", log_dir=str(tmp_path))
    before = {
        name: flat(getattr(loss, f"{name}_network_params")) for name in ("actor", "qvalue", "value")
    }
    updater = SoftUpdate(loss, tau=TAU)
    target0 = flat(loss.target_qvalue_network_params)
    assert torch.equal(target0, before["qvalue"])  # SoftUpdate starts from θ̄_0 = θ_0

    trainer = make_offline_trainer(
        loss,
        optimizer,
        rb,
        total_steps=steps,
        target_updater=updater,
        logger=logger,
        log_interval=log_interval,
    )
    # Registered after the target hook, so it sees θ_k and θ̄_k of the same step k.
    online, target = [], []

    def record() -> None:
        online.append(flat(loss.qvalue_network_params))
        target.append(flat(loss.target_qvalue_network_params))

    trainer.register_op("post_optim", record)
    trainer.register_op("post_optim_log", LogScalar(("next", "reward"), "batch_reward"))
    trainer.train()

    # Exactly one optimizer step per Trainer iteration.
    assert len(online) == steps
    assert trainer._optim_count == steps and trainer.collected_frames == steps
    assert all(int(optimizer.state[p]["step"]) == steps for p in loss.parameters())

    # Every network moved.
    for name, start in before.items():
        assert not torch.allclose(flat(getattr(loss, f"{name}_network_params")), start), name

    # θ̄_k = (1 − τ) θ̄_{k−1} + τ θ_k, step by step and in closed form.
    expected = target0
    for k in range(steps):
        expected = (1 - TAU) * expected + TAU * online[k]
        torch.testing.assert_close(target[k], expected, rtol=0, atol=1e-6)
    closed_form = (1 - TAU) ** steps * target0 + sum(
        TAU * (1 - TAU) ** (steps - 1 - k) * online[k] for k in range(steps)
    )
    final_target = flat(loss.target_qvalue_network_params)
    torch.testing.assert_close(final_target, closed_form, rtol=0, atol=1e-6)
    assert (final_target - target0).norm() > 0
    assert (final_target - online[-1]).norm() > 0.5 * (target0 - online[-1]).norm()

    # The offline buffer was only read.
    assert len(rb) == N
    assert (rb[:] == stored_before).all()

    # The logger got every loss term every log_interval steps, on the gradient-step axis.
    scalars = tmp_path / "iql" / "scalars"
    for key in ("loss_actor", "loss_qvalue", "loss_value", "entropy", "grad_norm"):
        rows = read_scalar_csv(scalars / f"{key}.csv")
        assert [s for s, _ in rows] == [5, 10, 15, 20], key
        assert all(math.isfinite(v) for _, v in rows), key
    assert read_scalar_csv(scalars / "optim_steps.csv") == [
        (5, 5.0),
        (10, 10.0),
        (15, 15.0),
        (20, 20.0),
    ]
    # A post_optim_log hook sees the sampled batches, not the ticker's empty ones.
    rows = read_scalar_csv(scalars / "batch_reward.csv")
    assert [s for s, _ in rows] == [5, 10, 15, 20]
    reward_std = float(ted_dataset()["next", "reward"].std())
    assert all(abs(v) < reward_std for _, v in rows)  # a mean over 32 rewards


def test_iql_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    data = ted_dataset()

    def build(total_steps, **kwargs):
        loss = make_iql(seed=0)
        optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
        rb = make_offline_replay_buffer(data, BATCH, seed=0)
        trainer = make_offline_trainer(
            loss,
            optimizer,
            rb,
            total_steps=total_steps,
            target_updater=SoftUpdate(loss, tau=TAU),
            **kwargs,
        )
        return trainer, loss

    straight, loss_straight = build(12)
    straight.train()

    interrupted, _ = build(12, save_trainer_file=tmp_path / "ckpt", save_interval=100)

    def interrupt_at_step_6() -> None:
        if interrupted._optim_count == 6:
            interrupted.request_stop("simulated interruption")  # the Trainer saves, then stops

    interrupted.register_op("post_steps", interrupt_at_step_6)
    interrupted.train()
    assert interrupted._optim_count == 6

    resumed, loss_resumed = build(12)
    torch.manual_seed(123)  # global RNG state is not checkpointed; IQL's update does not use it
    resumed.load_from_file(tmp_path / "ckpt")
    assert resumed._optim_count == 6 and resumed.collected_frames == 6
    assert resumed.collector.iteration == 6
    resumed.train()

    assert resumed._optim_count == 12
    state_straight, state_resumed = loss_straight.state_dict(), loss_resumed.state_dict()
    assert state_straight.keys() == state_resumed.keys()
    for key in state_straight:
        torch.testing.assert_close(state_resumed[key], state_straight[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# A user's own replay buffer: checkpoints keep the sampling state, not the data
# ------------------------------------------------------------------------------------------------


def user_buffer(data: TensorDict, sampler, seed: int = 0) -> TensorDictReplayBuffer:
    """What a user builds by hand: a TorchRL buffer over a LazyTensorStorage, filled once."""
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(data.shape[0]),
        sampler=sampler,
        batch_size=BATCH,
        generator=torch.Generator().manual_seed(seed),
    )
    rb.extend(data)
    return rb


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize(
    ("sampler", "bytes_per_transition"),
    # without replacement, the sampler's state lists the indices left in the epoch (int64)
    [(RandomSampler, 0), (SamplerWithoutReplacement, 8)],
)
def test_checkpoint_size_does_not_grow_with_the_dataset(tmp_path, sampler, bytes_per_transition):
    sizes = {}
    for n in (512, 8192):
        data = ted_dataset(n)
        loss = make_iql()
        trainer = make_offline_trainer(
            loss,
            torch.optim.Adam(loss.parameters(), lr=1e-3),
            user_buffer(data, sampler()),
            total_steps=3,
            target_updater=SoftUpdate(loss, tau=TAU),
            save_trainer_file=tmp_path / f"ckpt{n}",
        )
        trainer.train()
        sizes[n] = checkpoint_bytes(tmp_path / f"ckpt{n}")
    data_bytes = sum(
        v.numel() * v.element_size() for v in ted_dataset(8192 - 512).values(True, True)
    )
    growth = sizes[8192] - sizes[512]
    # 16 bytes of slack: the decimal digits of the lengths in the manifests
    assert 0 <= growth <= bytes_per_transition * (8192 - 512) + 16, sizes
    assert growth < data_bytes / 4  # 39 bytes of data per transition here, 8 of indices at most


def test_user_buffer_resume_equals_uninterrupted_run(tmp_path):
    data = ted_dataset()

    def build(total_steps, seed, **kwargs):
        loss = make_iql(seed=0)
        optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
        rb = user_buffer(data, SamplerWithoutReplacement(), seed=seed)
        trainer = make_offline_trainer(
            loss,
            optimizer,
            rb,
            total_steps=total_steps,
            target_updater=SoftUpdate(loss, tau=TAU),
            **kwargs,
        )
        return trainer, loss, rb

    straight, loss_straight, _ = build(40, seed=0)
    straight.train()

    ckpt = tmp_path / "ckpt"
    interrupted, _, _ = build(40, seed=0, save_trainer_file=ckpt, save_interval=100)

    def interrupt_at_step_21() -> None:  # past one epoch of 16 batches: the sampler reshuffled
        if interrupted._optim_count == 21:
            interrupted.request_stop("simulated interruption")

    interrupted.register_op("post_steps", interrupt_at_step_21)
    interrupted.train()
    assert interrupted._optim_count == 21
    # fresh objects; the buffer's own generator starts elsewhere: its state comes from the checkpoint
    resumed, loss_resumed, rb = build(40, seed=123)
    resumed.load_from_file(ckpt)
    assert resumed._optim_count == 21 and len(rb) == N
    assert (
        rb[:].exclude("index") == data
    ).all()  # the data are the buffer's own, untouched by the resume
    resumed.train()
    state_straight, state_resumed = loss_straight.state_dict(), loss_resumed.state_dict()
    for key in state_straight:
        torch.testing.assert_close(state_resumed[key], state_straight[key], rtol=0, atol=0)

    # the sampler's indices refer to the saved data: other data are refused, by name
    loss = make_iql(seed=0)
    other = make_offline_trainer(
        loss,
        torch.optim.Adam(loss.parameters(), lr=1e-3),
        user_buffer(ted_dataset(N // 2), SamplerWithoutReplacement()),
        total_steps=40,
        target_updater=SoftUpdate(loss, tau=TAU),
    )
    with pytest.raises(CheckpointError, match=f"over {N} transitions.*holds {N // 2}"):
        other.load_from_file(ckpt)


def test_sampling_state_keeps_an_offline_buffer_state_as_it_is():
    rb = make_offline_replay_buffer(ted_dataset(), BATCH, seed=0)
    rb.sample()
    state = SamplingState(rb).state_dict()
    # The packed sampler's state (docs/design.md, "Batch sampling"): its format tag, the epoch's
    # permutation and the position in it, the generator and the dataset size.
    assert state.keys() == rb.state_dict().keys()
    assert set(state) == {"format", "permutation", "position", "generator", "num_transitions"}
    fresh = make_offline_replay_buffer(ted_dataset(), BATCH, seed=5)
    SamplingState(fresh).load_state_dict(state)
    torch.testing.assert_close(fresh.sample(), rb.sample(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Step semantics with hand-computable losses
# ------------------------------------------------------------------------------------------------


def test_loss_terms_are_summed_and_each_iteration_takes_one_step_on_a_sampled_batch():
    steps, lr = 5, 0.1
    data = ted_dataset()
    rb = make_offline_replay_buffer(data, BATCH, seed=0)
    loss = QuadraticLoss(w0=3.0)
    trainer = make_offline_trainer(
        loss, torch.optim.SGD(loss.parameters(), lr=lr), rb, total_steps=steps
    )
    trainer.train()

    # ∇(w² + (w − 2)²) = 4w − 4, so w_k − 1 = (1 − 4 lr)^k (w_0 − 1); the 1000 w entry is ignored.
    assert loss.w.item() == pytest.approx(1 + 2 * (1 - 4 * lr) ** steps, rel=1e-6)
    # One loss call per step, each on a distinct [32] batch of dataset rows (not the ticker's).
    assert len(loss.batches) == steps
    rows = []
    for batch in loss.batches:
        assert batch.batch_size == torch.Size([BATCH])
        idx = (batch["observation"][:, 0] * N).round().long()
        torch.testing.assert_close(batch["observation"], data["observation"][idx])
        torch.testing.assert_close(batch["next", "reward"], data["next", "reward"][idx])
        rows.append(idx)
    assert torch.cat(rows).unique().numel() == steps * BATCH  # sampling without replacement


@pytest.mark.parametrize(("clip", "expected"), [(None, -3 * 0.1 * 1000), (1.0, -3 * 0.1 * 1.0)])
def test_clip_grad_norm_bounds_the_step(clip, expected):
    rb = make_offline_replay_buffer(ted_dataset(), BATCH, seed=0)
    loss = LinearLoss()
    trainer = make_offline_trainer(
        loss, torch.optim.SGD(loss.parameters(), lr=0.1), rb, total_steps=3, clip_grad_norm=clip
    )
    trainer.train()
    assert loss.w.item() == pytest.approx(expected, rel=1e-6)
    assert [float(g) for g in trainer._log_dict["grad_norm"]] == [1000.0] * 3  # pre-clip norm


def test_regression_loss_decreases():
    data = ted_dataset()
    rb = make_offline_replay_buffer(data, BATCH, seed=0)
    loss = RewardRegressionLoss()
    full = make_offline_replay_buffer(data, N, seed=0).sample()
    with torch.no_grad():
        start = loss(full)["loss_mse"].item()
    trainer = make_offline_trainer(
        loss, torch.optim.Adam(loss.parameters(), lr=0.05), rb, total_steps=150, seed=11
    )
    assert torch.initial_seed() == 11  # the Trainer seeds torch through the ticker's set_seed
    trainer.train()
    with torch.no_grad():
        end = loss(full)["loss_mse"].item()
    assert start > 1.0
    assert end < 0.01 * start


# ------------------------------------------------------------------------------------------------
# OfflineTicker and input checks
# ------------------------------------------------------------------------------------------------


def test_offline_ticker_counts_frames_and_resumes():
    ticker = OfflineTicker(4, frames_per_batch=3)
    assert ticker.init_random_frames == 0 and ticker.total_frames == 12
    assert ticker.set_seed(7) == 7
    it = iter(ticker)
    first = next(it)
    assert first.numel() == 3 and not list(first.keys())
    next(it)
    state = ticker.state_dict()
    assert state["iteration"] == 2

    again = OfflineTicker(4, frames_per_batch=3)
    again.load_state_dict(state)
    assert [b.numel() for b in again] == [3, 3]  # the two batches left
    assert list(again) == []

    with pytest.raises(ValueError, match="num_iterations=1"):
        OfflineTicker(1, frames_per_batch=3).load_state_dict(state)
    with pytest.raises(ValueError, match="frames_per_batch"):
        OfflineTicker(4, frames_per_batch=1).load_state_dict(state)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_iterations"):
            OfflineTicker(bad)


@pytest.mark.parametrize("total_steps", [0, -5, 2.5, True, None])
def test_total_steps_must_be_positive_int(total_steps):
    rb = make_offline_replay_buffer(ted_dataset(64), BATCH, seed=0)
    loss = LinearLoss()
    with pytest.raises(ValueError, match="total_steps"):
        make_offline_trainer(
            loss, torch.optim.SGD(loss.parameters(), lr=0.1), rb, total_steps=total_steps
        )


def test_bad_inputs_are_named():
    rb = make_offline_replay_buffer(ted_dataset(64), BATCH, seed=0)
    loss = make_iql()
    opt = torch.optim.Adam(loss.parameters())
    updater = SoftUpdate(loss, tau=TAU)
    with pytest.raises(ValueError, match="log_interval"):
        make_offline_trainer(loss, opt, rb, total_steps=1, target_updater=updater, log_interval=0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        make_offline_trainer(
            loss, opt, rb, total_steps=1, target_updater=updater, clip_grad_norm=-1.0
        )
    with pytest.raises(TypeError, match="replay_buffer"):
        make_offline_trainer(loss, opt, ted_dataset(64), total_steps=1, target_updater=updater)
    with pytest.raises(TypeError, match="optimizer"):
        make_offline_trainer(loss, list(loss.parameters()), rb, total_steps=1)
    other = make_iql(seed=1)
    with pytest.raises(ValueError, match="different loss module"):
        make_offline_trainer(
            loss, opt, rb, total_steps=1, target_updater=SoftUpdate(other, tau=TAU)
        )
    with pytest.warns(UserWarning, match="target_updater is None"):
        make_offline_trainer(other, torch.optim.Adam(other.parameters()), rb, total_steps=1)
