"""OfflineLoop: stages, cadence, evaluation cadence, logging tags, exact resume, compile."""

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import IQLLoss, SoftUpdate
from torchrl.record.loggers import CSVLogger

from torchrl_sym.data import make_offline_replay_buffer
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.train.loop import Objective, OfflineLoop, Stage, TargetUpdate


def _dataset(n=512, obs_dim=5, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "terminated": torch.rand(n, 1, generator=g) < 0.05,
            },
        },
        [n],
    )


class Counter:
    """A fake objective/updater that records the stage steps it ran at."""

    def __init__(self):
        self.param = torch.nn.Parameter(torch.zeros(()))
        self.opt = torch.optim.SGD([self.param], lr=0.1)
        self.calls = 0

    def loss(self, batch):
        self.calls += 1
        return TensorDict({"loss_x": (self.param - 1.0) ** 2, "diag": self.param.detach()}, [])

    def step(self):
        self.calls += 1


def _tiny_iql(obs_dim=5, act_dim=2, hidden=(16, 16)):
    actor = make_gaussian_actor(obs_dim, act_dim, hidden)
    loss = IQLLoss(
        actor,
        make_qvalue(obs_dim, act_dim, hidden),
        make_value(obs_dim, hidden),
        expectile=0.7,
        temperature=3.0,
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=0.99)
    opts = [
        torch.optim.Adam(p.values(True, True), lr=1e-3)
        for p in (loss.value_network_params, loss.actor_network_params, loss.qvalue_network_params)
    ]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opts[1], T_max=100)
    return loss, opts, sched


def test_cadence_warmup_and_stage_order():
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    a, b, t = Counter(), Counter(), Counter()
    order = []
    pre = Stage(
        "pretrain",
        7,
        objectives=[Objective("a", lambda td: (order.append("pre"), a.loss(td))[1], [a.opt])],
    )
    main = Stage(
        "train",
        20,
        objectives=[
            Objective(
                "b", lambda td: (order.append("train"), b.loss(td))[1], [b.opt], every=3, start=5
            )
        ],
        targets=[TargetUpdate(t, every=2, start=4)],
    )
    skipped = Stage("empty", 0, objectives=[Objective("c", a.loss, [a.opt])])
    loop = OfflineLoop([pre, skipped, main], buffer, modules={}, progress=False, log_interval=5)
    loop.run()
    assert a.calls == 7
    assert b.calls == len([s for s in range(20) if s >= 5 and (s - 5) % 3 == 0]) == 5
    assert t.calls == len(range(4, 20, 2)) == 8
    assert order == ["pre"] * 7 + ["train"] * 5
    assert loop.global_step == 27 and loop.stage_index == 3
    # SGD on (p - 1)^2 with lr 0.1: p_k = 1 - 0.8^k
    assert float(a.param.detach()) == pytest.approx(1 - 0.8**7, rel=1e-6)


def test_evaluation_cadence_and_logged_tags(tmp_path):
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    loss, opts, sched = _tiny_iql()
    calls = []

    def evaluator(step):
        calls.append(step)
        return {"eval/return": float(step), "eval/normalized_score": 0.5 * step}

    logger = CSVLogger(exp_name="log", log_dir=str(tmp_path))
    stage = Stage(
        "train",
        25,
        objectives=[Objective("iql", loss, opts, schedulers=[sched])],
        targets=[TargetUpdate(SoftUpdate(loss, tau=0.005))],
        evaluate=True,
    )
    warm = Stage("warmup", 5, objectives=[Objective("iql", loss, opts)])
    loop = OfflineLoop(
        [warm, stage],
        buffer,
        modules={"loss": loss},
        evaluator=evaluator,
        eval_interval=10,
        logger=logger,
        log_interval=10,
        progress=False,
    )
    metrics = loop.run()
    # only the evaluating stage evaluates: at its steps 10, 20 and its end (25); global = 5 + those
    assert calls == [15, 25, 30]
    assert metrics["eval/return"] == 30.0
    tags = set(logger.experiment.scalars)
    for tag in (
        "train/loss_actor",
        "train/loss_qvalue",
        "train/loss_value",
        "train/entropy",
        "warmup/loss_value",
        "train/lr_iql_value",
        "train/lr_iql_actor",
        "train/lr_iql_qvalue",
        "eval/return",
        "eval/normalized_score",
        "time/steps_per_second",
        "time/update_seconds",
        "time/sample_seconds",
        "time/eval_seconds",
    ):
        assert tag in tags, tag
    # the actor's learning rate follows the cosine schedule: 25 scheduler steps in "train" + 0 in warmup
    assert not any(tag.startswith("train/lr_iql_") and tag[-1].isdigit() for tag in tags)
    assert "time/compile_seconds" not in tags  # eager: no compilation
    lr = logger.experiment.scalars["train/lr_iql_actor"][-1][1]
    assert lr == pytest.approx(
        1e-3 * 0.5 * (1 + torch.cos(torch.tensor(25 / 100 * torch.pi)).item()), rel=1e-5
    )


def _train_iql(tmp_path, steps, *, resume_dir=None, seed, checkpoint_interval=1000):
    torch.manual_seed(seed)
    buffer = make_offline_replay_buffer(_dataset(), 32, seed=seed)
    loss, opts, sched = _tiny_iql()
    pre = Stage(
        "pretrain",
        6,
        objectives=[
            Objective(
                "value",
                lambda td: TensorDict({"loss_value": loss.value_loss(td)[0]}, []),
                [opts[0]],
            )
        ],
    )
    stage = Stage(
        "train",
        steps,
        objectives=[Objective("iql", loss, opts, schedulers=[sched])],
        targets=[TargetUpdate(SoftUpdate(loss, tau=0.05), every=2)],
    )
    loop = OfflineLoop(
        [pre, stage],
        buffer,
        modules={"loss": loss},
        checkpoint_dir=resume_dir or tmp_path,
        checkpoint_interval=checkpoint_interval,
        progress=False,
    )
    return loop, loss, opts


def test_resume_is_exact(tmp_path):
    k = 40
    straight, loss_a, opts_a = _train_iql(tmp_path / "a", k, seed=0)
    straight.run()

    # the same run, stopped (as a kill would) right after its checkpoint half way through "train"
    first, _, _ = _train_iql(tmp_path / "b", k, seed=0, checkpoint_interval=6 + k // 2)
    _run_until(first, 6 + k // 2)
    # a fresh process: different seeds everywhere, state comes from the checkpoint only
    second, loss_b, opts_b = _train_iql(
        tmp_path / "b", k, seed=123, resume_dir=tmp_path / "b", checkpoint_interval=6 + k // 2
    )
    assert second.resume()
    assert (
        second.global_step == 6 + k // 2 and second.stage_index == 1 and second.stage_step == k // 2
    )
    second.run()
    sa, sb = loss_a.state_dict(), loss_b.state_dict()
    assert sa.keys() == sb.keys()
    assert any("target" in key for key in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for oa, ob in zip(opts_a, opts_b):
        for pa, pb in zip(oa.state.values(), ob.state.values()):
            assert torch.equal(pa["exp_avg"], pb["exp_avg"])


def _run_until(loop, global_step):
    """Run a loop and stop it (as a kill would) once it has checkpointed ``global_step``."""

    class Stop(Exception):
        pass

    save = loop.save_checkpoint

    def save_then_maybe_stop():
        path = save()
        if loop.global_step >= global_step:
            raise Stop
        return path

    loop.save_checkpoint = save_then_maybe_stop
    with pytest.raises(Stop):
        loop.run()


def test_bad_arguments():
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    c = Counter()
    with pytest.raises(ValueError, match="every"):
        Objective("x", c.loss, [c.opt], every=0)
    with pytest.raises(ValueError, match="start"):
        TargetUpdate(c, start=-1)
    with pytest.raises(TypeError, match="step"):
        TargetUpdate(object())
    with pytest.raises(ValueError, match="unique"):
        OfflineLoop(
            [Stage("s", 1, [Objective("x", c.loss, [c.opt])]), Stage("s", 1, [])],
            buffer,
            modules={},
        )
    with pytest.raises(ValueError, match="steps"):
        Stage("s", -1, [])
    with pytest.raises(ValueError, match="eval_interval"):
        OfflineLoop([Stage("s", 1, [])], buffer, modules={}, eval_interval=0)


def test_checkpoint_from_other_stages_is_refused(tmp_path):
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    c = Counter()
    loop = OfflineLoop(
        [Stage("behavior", 3, [Objective("x", c.loss, [c.opt])])],
        buffer,
        modules={},
        checkpoint_dir=tmp_path,
        checkpoint_interval=1,
        progress=False,
    )
    _run_until(loop, 1)
    other = OfflineLoop(
        [Stage("train", 3, [Objective("x", c.loss, [c.opt])])],
        buffer,
        modules={},
        checkpoint_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(ValueError, match="behavior"):
        other.resume()


def _run_counting_graphs(stage, buffer, loss, compile_flag):
    """A loop over ``stage`` run once from a fresh dynamo: the loop and the graphs it built."""
    from torch._dynamo.utils import counters

    loop = OfflineLoop(
        [stage], buffer, modules={"loss": loss}, compile=compile_flag, progress=False
    )
    torch._dynamo.reset()
    counters.clear()
    loop.run()
    return loop, counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_update_matches_eager_and_does_not_recompile(tmp_path):
    from torch._dynamo.utils import counters

    results = []
    for compile_flag in (False, True):
        torch.manual_seed(0)
        buffer = make_offline_replay_buffer(_dataset(n=256), 32, seed=0)
        loss, opts, _ = _tiny_iql(hidden=(8,))
        stage = Stage(
            "train",
            12,
            objectives=[
                Objective("iql", loss, opts),
                Objective(
                    "v",
                    lambda td, loss=loss: TensorDict({"loss_v2": loss.value_loss(td)[0]}, []),
                    [opts[0]],
                    every=3,
                ),
            ],
            targets=[TargetUpdate(SoftUpdate(loss, tau=0.1))],
        )
        loop, graphs = _run_counting_graphs(stage, buffer, loss, compile_flag)
        compile_seconds = loop.timings.get("compile", 0.0)
        # 12 more steps repeat the cadence patterns already seen: nothing new may be compiled
        stage.steps, loop.stage_index = 24, 0
        loop.run()
        assert counters["stats"]["unique_graphs"] == graphs
        if compile_flag:
            assert graphs >= 1
            # the first call of each pattern compiled; the calls after it are updates
            assert compile_seconds > 0 and stage._compiled_patterns == {
                ((True, True), (True,)),
                ((True, False), (True,)),
            }
            assert loop.timings["compile"] == compile_seconds
            assert loop.timings["update"] < compile_seconds
        else:
            assert "compile" not in loop.timings
        results.append({k: v.clone() for k, v in loss.state_dict().items()})
    eager, compiled = results
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)


def test_a_scheduled_learning_rate_does_not_recompile_the_compiled_update():
    """A cosine LR schedule changes the actor's rate at every step: compiled, the optimizer's
    step must not be recompiled for each new value (dynamo guards a float rate's value; after 8
    recompiles the step ran eagerly for the rest of a run), and the rates follow the schedule;
    checkpoints keep float rates."""
    from torch._dynamo.utils import counters

    rates = []
    for compile_flag in (False, {"backend": "eager"}):
        torch.manual_seed(0)
        buffer = make_offline_replay_buffer(_dataset(n=256), 32, seed=0)
        loss, opts, sched = _tiny_iql(hidden=(8,))
        stage = Stage("train", 4, objectives=[Objective("iql", loss, opts, schedulers=[sched])])
        loop, graphs = _run_counting_graphs(stage, buffer, loss, compile_flag)
        stage.steps, loop.stage_index = 16, 0
        loop.run()
        assert counters["stats"]["unique_graphs"] == graphs  # new rates, no new graph
        assert sched.last_epoch > 4
        expected = 1e-3 * (1 + math.cos(math.pi * sched.last_epoch / 100)) / 2
        rates.append(float(opts[1].param_groups[0]["lr"]))
        assert rates[-1] == pytest.approx(expected, rel=1e-12)
        saved = loop.state_dict()["optimizers"]
        assert all(
            isinstance(g["lr"], float) for state in saved.values() for g in state["param_groups"]
        )
    assert rates[0] == rates[1]


def test_learning_rate_tags_name_the_networks(tmp_path):
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    loss, opts, _ = _tiny_iql()
    extra = Counter()  # an optimizer over parameters of no network of the loss
    runs = iter(range(10))

    def run(objectives, modules):
        logger = CSVLogger(exp_name=f"log{next(runs)}", log_dir=str(tmp_path))
        loop = OfflineLoop(
            [Stage("train", 2, objectives=objectives)],
            buffer,
            modules=modules,
            logger=logger,
            log_interval=1,
            progress=False,
        )
        loop.run()
        return {t for t in logger.experiment.scalars if "/lr_" in t}

    # names inferred from the loss's <network>_network_params, in the optimizers' order
    assert run([Objective("iql", loss, opts)], {"loss": loss}) == {
        "train/lr_iql_value",
        "train/lr_iql_actor",
        "train/lr_iql_qvalue",
    }
    # the loss behind a wrapper is found among the loop's modules; an unknown one is positional
    wrapped = Objective("critic", lambda td: loss(td), [opts[2], extra.opt])
    assert run([wrapped], {"loss": loss}) == {"train/lr_critic_qvalue", "train/lr_critic_1"}
    # explicit names win; one optimizer keeps the plain lr_<objective>
    named = Objective("iql", loss, opts, optimizer_names=("v", "pi", "q"))
    single = Objective("value", extra.loss, [extra.opt])
    assert run([named, single], {"loss": loss}) == {
        "train/lr_iql_v",
        "train/lr_iql_pi",
        "train/lr_iql_q",
        "train/lr_value",
    }
    with pytest.raises(ValueError, match="optimizer_names"):
        Objective("iql", loss, opts, optimizer_names=("v", "v", "q"))
    with pytest.raises(ValueError, match="optimizer_names"):
        Objective("iql", loss, opts, optimizer_names=("v",))


def test_first_call_of_each_cadence_pattern_is_timed_as_compilation(monkeypatch, tmp_path):
    """A stand-in for torch.compile that takes 0.2 s on the first call of each pattern."""
    import time

    calls = []

    def fake_compile(update, **kwargs):
        seen = set()

        def compiled(batch, active, targets):
            calls.append((active, targets))
            if (active, targets) not in seen:
                seen.add((active, targets))
                time.sleep(0.2)
            return update(batch, active, targets)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    a, b = Counter(), Counter()
    stage = Stage(
        "train",
        9,
        objectives=[Objective("a", a.loss, [a.opt]), Objective("b", b.loss, [b.opt], every=3)],
    )
    logger = CSVLogger(exp_name="log", log_dir=str(tmp_path))
    loop = OfflineLoop(
        [stage], buffer, modules={}, compile=True, logger=logger, log_interval=9, progress=False
    )
    loop.run()
    assert len(calls) == 9 and len(set(calls)) == 2  # (a and b), (a only)
    assert 0.4 <= loop.timings["compile"] < 0.4 + 0.5 * 2
    assert loop.timings["update"] < 0.2  # seven plain calls, no sleeping
    scalars = logger.experiment.scalars
    assert scalars["time/compile_seconds"][-1] == (9, pytest.approx(loop.timings["compile"]))
    assert scalars["time/update_seconds"][-1][1] == pytest.approx(loop.timings["update"])


class _NoisyTarget:
    """An objective that draws from torch's global generator at every step, and a sampled
    Pendulum policy whose pre-tanh mean is its parameter (so evaluation depends on training)."""

    def __init__(self):
        from tensordict.nn import TensorDictModule
        from torchrl.modules import ProbabilisticActor, TanhNormal

        self.param = torch.nn.Parameter(torch.zeros(()))
        self.opt = torch.optim.SGD([self.param], lr=0.1)
        module = torch.nn.Module()
        module.param = self.param

        def loc_scale(obs):
            shape = (*obs.shape[:-1], 1)
            return self.param.expand(shape), torch.ones(shape)

        self.policy = ProbabilisticActor(
            TensorDictModule(loc_scale, in_keys=["observation"], out_keys=["loc", "scale"]),
            in_keys=["loc", "scale"],
            distribution_class=TanhNormal,
            distribution_kwargs={"low": -2.0, "high": 2.0},
        )
        self.module = module

    def loss(self, batch):
        target = torch.rand(())  # the global generator: evaluation must leave it alone
        return TensorDict({"loss_x": (self.param - target) ** 2}, [])


def _noisy_run(directory, *, evaluate, seed, stop_at=None):
    from torchrl.envs import GymEnv

    from torchrl_sym.train.evaluate import Evaluator

    torch.manual_seed(seed)
    noisy = _NoisyTarget()
    evaluator = None
    if evaluate:
        evaluator = Evaluator(
            GymEnv("Pendulum-v1"),
            noisy.policy,
            num_episodes=2,
            max_steps=20,
            seed=100,
            mode="sample",
            csv_path=directory / "eval.csv",
        )
    loop = OfflineLoop(
        [Stage("train", 30, [Objective("x", noisy.loss, [noisy.opt])], evaluate=True)],
        make_offline_replay_buffer(_dataset(), 16, seed=0),
        modules={"noisy": noisy.module},
        evaluator=evaluator,
        eval_interval=10,
        checkpoint_dir=directory / "checkpoints",
        checkpoint_interval=15,
        progress=False,
    )
    if stop_at is not None:
        _run_until(loop, stop_at)
    else:
        loop.resume()
        loop.run()
    return noisy, loop


def test_sampled_evaluation_leaves_training_alone_and_repeats_after_resume(tmp_path):
    plain, _ = _noisy_run(tmp_path / "plain", evaluate=False, seed=0)
    evaluated, loop = _noisy_run(tmp_path / "evaluated", evaluate=True, seed=0)
    # the objective draws from the global generator: an evaluation that moved it would show here
    assert torch.equal(evaluated.param.detach(), plain.param.detach())
    straight = (tmp_path / "evaluated" / "eval.csv").read_text()
    assert [h[0] for h in loop.evaluator.history] == [10, 20, 30]
    # killed after the checkpoint at step 15, resumed by a process with another global seed
    _noisy_run(tmp_path / "resumed", evaluate=True, seed=0, stop_at=15)
    resumed, _ = _noisy_run(tmp_path / "resumed", evaluate=True, seed=99)
    assert torch.equal(resumed.param.detach(), plain.param.detach())
    assert (tmp_path / "resumed" / "eval.csv").read_text() == straight


def test_a_stacked_evaluation_logs_each_seed_by_its_number(caplog):
    """Seed ``k`` of a stack that starts at ``first_seed`` is logged as seed ``first_seed + k``
    (a top-up ``seed=3 stack_seeds=2`` logs seeds 3 and 4, not 0 and 1)."""
    import logging

    buffer = make_offline_replay_buffer(_dataset(), 16, seed=0)
    stage = Stage("train", 1, objectives=[], evaluate=True)
    evaluator = lambda step: [{"eval/return": 1.0}, {"eval/return": 2.0}]  # noqa: E731
    loop = OfflineLoop(
        [stage], buffer, modules={}, evaluator=evaluator, progress=False, first_seed=3
    )
    with caplog.at_level(logging.INFO, logger="torchrl_sym.train.loop"):
        loop._evaluate(stage)
    lines = [r.getMessage() for r in caplog.records if "(train), seed" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [
        "step 0 (train), seed 3",
        "step 0 (train), seed 4",
    ]
