"""benchmarks/cases_srpo.py (one update per SRPO stage) and benchmarks/bench_srpo_official.py (the
side-by-side with thu-ml/SRPO): what runs without the official code, and the full comparison on
it when ``SRPO_OFFICIAL`` points to a clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CLONE = "git clone https://github.com/thu-ml/SRPO"


@pytest.fixture(scope="module")
def bench():
    """``(cases_srpo, bench_srpo_official)`` imported from benchmarks/ (not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_srpo_official
        import cases_srpo

        yield cases_srpo, bench_srpo_official
    finally:
        while str(BENCHMARKS) in sys.path:
            sys.path.remove(str(BENCHMARKS))


# ------------------------------------------------------------------------------ cases_srpo


def test_each_stage_update_runs_with_finite_losses_and_moves_its_parameters(bench):
    cases_srpo, _ = bench
    torch.manual_seed(0)
    cases = cases_srpo.stage_cases(5, 2, [16], 8)
    # the recipe samples stage 1 with its own batch size (256), stated in the label
    assert [c.label for c in cases] == ["srpo behavior (batch 256)", "srpo critic", "srpo policy"]
    assert cases[0].batch.batch_size == torch.Size([256])
    assert cases[1].batch.batch_size == cases[2].batch.batch_size == torch.Size([8])
    for case in cases:
        before = [p.detach().clone() for p in case.trained]
        assert before, case.label
        out = case.update(case.batch)
        losses = {k: v for k, v in out.items() if k.startswith("loss_")}
        assert losses, case.label
        assert all(torch.isfinite(v).all() for v in losses.values()), (case.label, losses)
        moved = [not torch.equal(b, p.detach()) for b, p in zip(before, case.trained)]
        assert all(moved), f"{case.label}: {moved.count(False)} parameter tensors did not change"


def test_stage_losses_are_the_recipes(bench):
    cases_srpo, _ = bench
    from torchrl.objectives import IQLLoss

    from torchrl_sym.objectives import DiffusionBehaviorLoss, SRPOLoss

    behavior, critic, policy = cases_srpo.stage_cases(5, 2, [16], 256)
    assert behavior.label == "srpo behavior"  # the same batch size as the recipe's stage 1
    bc = behavior.loss
    assert isinstance(bc, DiffusionBehaviorLoss)
    assert bc.action_reduction == "sum" and bc.t_min == 1e-3 and bc.ema is None
    (adamw,) = behavior.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.01
    # the ε-network is the recipe's (256 wide, 3 blocks, 1.6M parameters), whatever `hidden` is
    assert sum(p.numel() for p in behavior.trained) > 1_000_000
    iql = critic.loss
    assert isinstance(iql, IQLLoss) and iql.expectile == 0.7 and iql.num_qvalue_nets == 2
    assert [type(o) for o in critic.optimizers] == [torch.optim.Adam, torch.optim.Adam]
    srpo = policy.loss
    assert isinstance(srpo, SRPOLoss)
    assert (srpo.beta, srpo.weight, srpo.t_min, srpo.t_max) == (0.05, "vds", 0.02, 0.98)


def test_the_critic_update_moves_the_polyak_target(bench):
    cases_srpo, _ = bench
    critic = cases_srpo.critic_case(5, 2, [16], 8)
    before = critic.loss.target_qvalue_network_params.clone()
    critic.update(critic.batch)
    after = critic.loss.target_qvalue_network_params
    pairs = zip(before.values(True, True), after.values(True, True), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


def test_updates_take_a_device_and_return_label_update_batch(bench):
    cases_srpo, _ = bench
    rows = cases_srpo.updates(5, 2, [16], 8, device=torch.device("cpu"))
    assert [label for label, *_ in rows] == [
        "srpo behavior (batch 256)",
        "srpo critic",
        "srpo policy",
    ]
    for _, update, batch in rows:
        assert callable(update) and batch.device == torch.device("cpu")


# ------------------------------------------------------------------------------ bench_srpo_official


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "partial"])
def test_official_path_errors_name_the_path_and_how_to_clone(bench, tmp_path, kind):
    _, official = bench
    path = tmp_path / "SRPO"
    if kind == "file":
        path.write_text("")
    elif kind in ("empty", "partial"):
        path.mkdir()
        if kind == "partial":
            (path / "model.py").write_text("")
    with pytest.raises(official.OfficialCodeError) as err:
        official.official_dir(path)
    message = str(err.value)
    assert str(path) in message and CLONE in message
    if kind == "missing":
        assert "does not exist" in message
    if kind == "partial":
        assert "SRPO.py" in message and "utils.py" in message and "model.py" not in message


def test_the_command_line_refuses_a_bad_official_path(bench, tmp_path, capsys):
    _, official = bench
    path = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_:
        official.main(["--official", str(path), "--no-compile"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and CLONE in err


FAKE_UTILS = """
import d4rl
import gym
import torch

def marginal_prob_std(t, device="cuda", beta_1=20.0, beta_0=0.1):
    return t, t
"""


def test_official_modules_load_from_the_clone_and_leave_sys_modules_as_they_were(bench, tmp_path):
    """Their top-level names (SRPO, model, utils) are imported from the clone and then dropped
    from sys.modules again; missing d4rl / gym are stood in for only during the import."""
    _, official = bench
    (tmp_path / "model.py").write_text("WHO = 'model'\n")
    (tmp_path / "SRPO.py").write_text("from model import *\n")
    (tmp_path / "utils.py").write_text(FAKE_UTILS)
    sentinel = object()
    before = {name: sys.modules.get(name, sentinel) for name in ("SRPO", "model", "utils")}
    had = {name: name in sys.modules for name in ("d4rl", "gym")}
    loaded = official.load_official(tmp_path)
    assert loaded.SRPO.WHO == "model" and loaded.root == tmp_path.resolve()
    assert {name: sys.modules.get(name, sentinel) for name in before} == before
    assert {name: name in sys.modules for name in had} == had
    assert str(tmp_path) not in sys.path


def test_cuda_means_cpu_only_inside_the_block(bench):
    _, official = bench
    layer, original = nn.Linear(2, 2), nn.Module.to
    with official._cuda_means_cpu():
        assert layer.to("cuda") is layer and layer.weight.device.type == "cpu"
        assert layer.to(device="cuda:0").weight.device.type == "cpu"
    assert nn.Module.to is original
    if not torch.cuda.is_available():
        with pytest.raises((AssertionError, RuntimeError)):
            layer.to("cuda")


def test_weight_map_covers_our_networks(bench):
    """Every parameter and buffer of our actor, ε-network and critic heads gets one of theirs."""
    _, official = bench
    actor, behavior, critics = official.build_networks(17, 6, policy_layers=2, q_layers=2)
    maps = official.weight_map(2, 2, 3)
    for network, ours in (("actor", actor), ("behavior", behavior), ("q1", critics[0])):
        mapped = [our for _, our in maps[network]]
        assert sorted(mapped) == sorted(ours.state_dict()), network
        assert len(set(mapped)) == len(mapped)
    assert [t.replace("q1.", "q2.") for t, _ in maps["q1"]] == [t for t, _ in maps["q2"]]


def test_interleaved_timing_rotates_the_order_and_uses_every_input(bench):
    _, official = bench
    calls: list[tuple[str, int]] = []

    def contender(name):
        return lambda x: calls.append((name, x))

    rates = official.interleaved_rates(
        {"a": (contender("a"), [0, 1]), "b": (contender("b"), [2])},
        window=0.0,
        rounds=2,
        warmup=1,
    )
    assert {name: len(r) for name, r in rates.items()} == {"a": 2, "b": 2}
    assert all(r > 0 for rs in rates.values() for r in rs)
    firsts = [calls[0][0], calls[(len(calls)) // 2][0]]
    assert firsts == ["a", "b"]  # round 2 starts with the other one
    assert {x for name, x in calls if name == "a"} == {0, 1}


# ------------------------------------------------------------------------------ on their code

OFFICIAL = os.environ.get("SRPO_OFFICIAL")


@pytest.mark.skipif(
    not OFFICIAL,
    reason=f"set SRPO_OFFICIAL to a clone of the official SRPO code ({CLONE}) to run the "
    "side-by-side comparison on it",
)
def test_full_comparison_on_the_official_code(tmp_path):
    """Their update and ours agree (the script fails otherwise) and all three are timed."""
    page = tmp_path / "srpo_official.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_srpo_official.py"),
            *("--official", OFFICIAL, "--threads", "1", "--window", "0.2", "--rounds", "2"),
            *("--write", str(page)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = page.read_text()
    rows = {row.split("|")[1].strip(): row for row in text.splitlines() if row.startswith("| ")}
    for name in ("official (eager)", "torchrl_sym (eager)", "torchrl_sym (torch.compile)"):
        assert float(rows[name].split("|")[2]) > 0
    assert "actor gradient (1st update)" in rows and "behavior ε(a_t, t, s), eval" in rows
    assert "ours eager / official = **" in text and "torch 2." in text
