"""SRPO's policy update side by side: the official thu-ml/SRPO code against torchrl_sym's SRPOLoss.

Both updates are SRPO's stage 3 at HalfCheetah size (observation 17, action 6, batch 256): the
Dirac actor's forward, one no-grad pass of the frozen behavior ε-network (IDQL LN-ResNet 256 wide,
3 blocks) at ``t ~ U(0.02, 0.98)``, ``∇_a ½(Q̄₁ + Q̄₂)`` of the frozen twin critic, the loss
``ω(t)⟨ε̂, a⟩ − β⟨∇_a Q̄, a⟩`` with ``ω = σ_t²``, backward, one Adam step and one step of the
cosine LR schedule. The official one is their ``SRPO.update_SRPO_policy``, run from a user's
clone of their repository (imported at run time, never copied here); ours is
``torchrl_sym.objectives.SRPOLoss`` with the recipe's networks and the offline loop's update.

    git clone https://github.com/thu-ml/SRPO /tmp/thu-srpo
    python benchmarks/bench_srpo_official.py --official /tmp/thu-srpo
    python benchmarks/bench_srpo_official.py --official /tmp/thu-srpo --threads 1 \\
        --write docs/benchmarks_srpo_official.md

What it does, in order:

1. builds their ``SRPO`` module with their own argument defaults (``utils.get_args`` for
   ``halfcheetah-medium-v2``: β = 0.2, ``WT=VDS``, 2×256 actor and critic, 3 ε-network blocks)
   on the CPU, and ours at the same sizes;
2. copies their weights into ours, parameter by parameter (an explicit name map; their critic
   reads ``[a, s]`` and ours ``[s, a]``, so the first critic layer's columns are permuted);
3. checks that their actor, ε-network and both target critic heads give our outputs on a batch,
   then that one update from the same random state (both draw ``t`` then ``z`` from torch's
   global generator in the same order) gives the same loss, ``E Q̄``, actor gradients and
   updated actor weights, and that a few more updates on the same batches keep them together;
4. times updates/s at ``--threads`` (default 1): theirs eager, ours eager and ours
   ``torch.compile`` d, in ``--rounds`` rounds of one ``--window``-second window each, the
   order rotating every round, all in this process and on the same pool of batches, so that
   a loaded machine slows all three alike; it reports each one's median and the median of
   the per-round ratios.

Their code needs ``d4rl`` and ``gym`` only in ``utils.py``'s evaluation helpers: when those are
not installed, empty stand-in modules are put in ``sys.modules`` while their files are imported
(nothing of theirs that runs here touches them). Their constructors hard-code ``.to("cuda")``;
they are run with ``"cuda"`` read as the CPU (see ``_cuda_means_cpu``), and everything runs on
the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tensordict import TensorDict
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import cases_srpo  # benchmarks/ is not a package: imported from this folder

from torchrl_sym.models import make_qvalue
from torchrl_sym.objectives import SRPOLoss
from torchrl_sym.objectives.srpo import make_srpo_actor
from torchrl_sym.recipes.srpo import make_srpo_loss
from torchrl_sym.train.recipe import network_optimizers

CLONE_HINT = "git clone https://github.com/thu-ml/SRPO"
OFFICIAL_FILES = ("SRPO.py", "model.py", "utils.py")
OFFICIAL_MODULES = ("SRPO", "model", "utils")  # their top-level module names
ENV = "halfcheetah-medium-v2"  # observation 17, action 6; their β for it is 0.2
OBS_DIM, ACT_DIM, BATCH = 17, 6, 256
POLICY_STEPS = 1_000_000  # their cosine schedule's T_max (n_policy_epochs × 10,000)
TARGET = 1.5  # issue #16: ours should reach 1.5× the official update's rate


class OfficialCodeError(ValueError):
    """``--official`` is not a usable clone of thu-ml/SRPO."""


def official_dir(path: str | os.PathLike) -> Path:
    """``path`` as the root of a thu-ml/SRPO checkout, or :class:`OfficialCodeError` naming it."""
    root = Path(path).expanduser()
    if not root.exists():
        raise OfficialCodeError(
            f"--official {str(path)!r} does not exist. Clone the official SRPO code first: "
            f"`{CLONE_HINT} {path}`, and pass that directory."
        )
    if not root.is_dir():
        raise OfficialCodeError(
            f"--official {str(path)!r} is not a directory. Pass the root of a clone of the "
            f"official SRPO code (`{CLONE_HINT}`)."
        )
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise OfficialCodeError(
            f"--official {str(path)!r} lacks {', '.join(missing)}: it is not a checkout of "
            f"thu-ml/SRPO. Clone it with `{CLONE_HINT}` and pass the clone's root directory."
        )
    return root.resolve()


def official_commit(root: Path) -> str:
    """The checkout's commit (``git rev-parse HEAD``), or ``"unknown"`` (e.g. an exported tree)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_official(root: Path) -> types.SimpleNamespace:
    """Import their ``SRPO``, ``model`` and ``utils`` modules from ``root``.

    Their files import each other by top-level name (``from model import *``), so ``root`` is
    put first on ``sys.path`` for the import; whatever held those names in ``sys.modules`` before
    is restored afterwards, and so is ``sys.path``.
    """
    root = official_dir(root)
    saved = {name: sys.modules.pop(name) for name in OFFICIAL_MODULES if name in sys.modules}
    # Stand-ins for packages their utils.py imports at the top but uses only to evaluate in gym
    # environments (d4rl.get_normalized_score, gym.make); neither runs here. Real ones are used
    # when installed. Removed from sys.modules after the import.
    stubs = [
        name
        for name in ("d4rl", "gym")
        if name not in sys.modules and importlib.util.find_spec(name) is None
    ]
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(root))
    try:
        modules = {name: importlib.import_module(name) for name in OFFICIAL_MODULES}
    finally:
        sys.path.remove(str(root))
        for name in (*OFFICIAL_MODULES, *stubs):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return types.SimpleNamespace(root=root, **modules)


@contextlib.contextmanager
def _cuda_means_cpu() -> Iterator[None]:
    """Within the block, ``nn.Module.to("cuda")`` moves to the CPU: their ``SRPO`` and
    ``IQL_Critic`` constructors call ``.to("cuda")`` unconditionally (the rest of their model
    follows ``args.device``, which is ``"cpu"`` here)."""
    original = nn.Module.to

    def cpu(value):
        return "cpu" if isinstance(value, str) and value.startswith("cuda") else value

    def to(self, *args, **kwargs):
        args = tuple(cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = cpu(kwargs["device"])
        return original(self, *args, **kwargs)

    nn.Module.to = to
    try:
        yield
    finally:
        nn.Module.to = original


def build_official(official: types.SimpleNamespace, obs_dim: int, act_dim: int):
    """Their ``SRPO`` module (behavior ε-network, Dirac policy with Adam and cosine schedule, IQL
    critic) and its arguments: their ``get_args`` defaults for ``--env halfcheetah-medium-v2
    --device cpu``."""
    argv = sys.argv
    sys.argv = ["train_policy.py", "--env", ENV, "--device", "cpu"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # get_args and IQL_Critic print
            args = official.utils.get_args()
            marginal = functools.partial(official.utils.marginal_prob_std, device="cpu")
            with _cuda_means_cpu():
                model = official.SRPO.SRPO(
                    input_dim=obs_dim + act_dim,
                    output_dim=act_dim,
                    marginal_prob_std=marginal,
                    args=args,
                ).to("cpu")
                model.q[0].to("cpu")  # a plain list entry: not moved by model.to
    finally:
        sys.argv = argv
    return model, args


@dataclass
class Ours:
    loss: SRPOLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    actor: nn.Module
    behavior: nn.Module
    critics: list[nn.Module]

    def update(self, batch: TensorDict) -> TensorDict:
        """The offline loop's step of the recipe's policy stage (``torchrl_sym/train/loop.py``)."""
        out = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss_actor"].backward()
        self.optimizer.step()
        return out.detach()


def build_networks(obs_dim: int, act_dim: int, *, policy_layers: int, q_layers: int):
    """The recipe's stage-3 networks at these sizes: ``make_srpo_actor``, the recipe's ε-network
    (``cases_srpo.make_behavior``) and two ``make_qvalue`` heads."""
    actor = make_srpo_actor(obs_dim, act_dim, [256] * policy_layers)
    behavior = cases_srpo.make_behavior(obs_dim, act_dim)
    critics = [make_qvalue(obs_dim, act_dim, [256] * q_layers) for _ in range(2)]
    return actor, behavior, critics


def build_ours(actor, behavior, critics, *, beta: float) -> Ours:
    """``SRPOLoss`` with the recipe's settings (``torchrl_sym/configs/srpo.yaml``) and ``beta``,
    Adam with the recipe's learning rate, cosine-decayed over ``POLICY_STEPS`` as theirs. The
    loss copies the critic heads' weights: load them before."""
    cfg = cases_srpo.recipe_config()
    loss = make_srpo_loss(actor, behavior, critics, cfg, beta=beta)
    (optimizer,) = network_optimizers(loss, cfg.policy.lr, ("actor",))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=POLICY_STEPS)
    return Ours(loss, optimizer, scheduler, actor, behavior, critics)


# ------------------------------------------------------------------------------ weights


def weight_map(policy_layers: int, q_layers: int, blocks: int) -> dict[str, list[tuple[str, str]]]:
    """``{network: [(their state-dict key, our state-dict key)]}``, weights and biases.

    Their ``Dirac_Policy.net``, ``TwinQ.q1/q2`` and ``nn.Sequential`` MLPs keep a Linear at
    every even index, as ours; their ε-network is ``ScoreNet_IDQL`` (``embed.0.W`` Fourier
    frequencies, ``cond_model`` time MLP, ``main`` LN-ResNet), ours ``ResidualMLPNoisePredictor``.
    """

    def linear(theirs: str, ours: str) -> list[tuple[str, str]]:
        return [(f"{theirs}.weight", f"{ours}.weight"), (f"{theirs}.bias", f"{ours}.bias")]

    actor = [
        pair
        for i in range(policy_layers + 1)
        for pair in linear(f"net.{2 * i}", f"module.0.{2 * i}")
    ]
    critic = {
        head: [
            pair
            for i in range(q_layers + 1)
            for pair in linear(f"{head}.{2 * i}", f"module.{2 * i}")
        ]
        for head in ("q1", "q2")
    }
    eps = [("embed.0.W", "network.time_embedding.weight")]
    eps += linear("cond_model.0", "network.time_mlp.0") + linear(
        "cond_model.2", "network.time_mlp.2"
    )
    eps += linear("main.fc", "network.input")
    for b in range(blocks):
        eps += linear(f"main.blocks.{b}.layer_norm", f"network.blocks.{b}.norm")
        eps += linear(f"main.blocks.{b}.fc1", f"network.blocks.{b}.fc1")
        eps += linear(f"main.blocks.{b}.fc2", f"network.blocks.{b}.fc2")
    eps += linear("main.out_fc", "network.head")
    return {"actor": actor, "behavior": eps, **critic}


def unused_official_parameters(theirs: nn.Module, blocks: int) -> list[str]:
    """Their ε-network keys with no counterpart: ``MLPResNetBlock.residual``, a Linear applied
    only when a block's input and output widths differ, which they never do (256 → 256)."""
    keys = set(theirs.diffusion_behavior.state_dict())
    mapped = {k for k, _ in weight_map(1, 1, blocks)["behavior"]}
    return sorted(keys - mapped)


def copy_official_weights(model, actor, behavior, critics, act_dim: int, args) -> int:
    """Copy their weights into our networks (in place); returns the number of tensors copied."""
    maps = weight_map(args.policy_layer, args.q_layer, args.actor_blocks)
    target = model.q[0].q0_target  # SRPO reads the target critic
    pairs = [  # (theirs, ours, key map, critic: permute the input columns)
        (model.SRPO_policy, actor, maps["actor"], False),
        (model.diffusion_behavior, behavior, maps["behavior"], False),
        (target, critics[0], maps["q1"], True),
        (target, critics[1], maps["q2"], True),
    ]
    copied = 0
    with torch.no_grad():
        for theirs, ours, mapping, critic in pairs:
            src, dst = theirs.state_dict(), ours.state_dict(keep_vars=True)
            for their_key, our_key in mapping:
                value = src[their_key]
                if critic and our_key == "module.0.weight":  # input [a, s] -> ours [s, a]
                    value = torch.cat([value[:, act_dim:], value[:, :act_dim]], dim=1)
                if dst[our_key].shape != value.shape:
                    raise RuntimeError(
                        f"their {their_key} {list(value.shape)} does not fit our {our_key} "
                        f"{list(dst[our_key].shape)}"
                    )
                dst[our_key].copy_(value)
                copied += 1
    return copied


# ------------------------------------------------------------------------------ agreement


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _scale(a: torch.Tensor) -> float:
    return float(a.detach().abs().max())


@dataclass
class Check:
    what: str
    max_abs_diff: float
    scale: float  # max |official value|, for reading the difference (nan: a relative check)
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _our_linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def check_outputs(model, ours: Ours, obs: torch.Tensor, act_dim: int, seed: int) -> list[Check]:
    """Their networks and ours on the same inputs (eval mode, no grad): the actor, the ε-network,
    the VP-SDE marginals and the two target critic heads as our loss holds them."""
    g = torch.Generator().manual_seed(seed)
    n = obs.shape[0]
    action = torch.rand(n, act_dim, generator=g) * 2 - 1
    t = torch.rand(n, generator=g) * 0.96 + 0.02
    noisy = torch.randn(n, act_dim, generator=g)
    loss = ours.loss
    checks = []
    model.diffusion_behavior.eval()
    ours.behavior.eval()
    with torch.no_grad():
        theirs = model.SRPO_policy(obs)
        mine = ours.actor(observation=obs)
        checks.append(Check("actor π(s)", _max_diff(theirs, mine), _scale(theirs), 1e-6))
        theirs = model.diffusion_behavior(noisy, t, obs)
        mine = ours.behavior.epsilon(obs, noisy, t)
        checks.append(
            Check("behavior ε(a_t, t, s), eval", _max_diff(theirs, mine), _scale(theirs), 2e-5)
        )
        alpha, std = model.marginal_prob_std(t)
        ours_alpha, ours_sigma = ours.behavior.schedule.marginal(t)
        checks.append(
            Check(
                "VP-SDE (α_t, σ_t)",
                max(_max_diff(alpha, ours_alpha), _max_diff(std, ours_sigma)),
                1.0,
                1e-6,
            )
        )
        q1, q2 = model.q[0].q0_target.both(action, obs)
        for i, theirs in enumerate((q1, q2)):
            with loss.target_qvalue_network_params[i].to_module(loss.qvalue_network):
                mine = loss.qvalue_network(observation=obs, action=action)
            checks.append(
                Check(
                    f"target critic head {i + 1} Q(s, a)",
                    _max_diff(theirs, mine),
                    _scale(theirs),
                    1e-5,
                )
            )
    model.diffusion_behavior.train()  # as their update leaves it
    ours.behavior.train()
    return checks


@contextlib.contextmanager
def _record_backward(store: list) -> Iterator[None]:
    """Record the tensors ``.backward()`` is called on (their update keeps its loss local)."""
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        store.append(self.detach().clone())
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.backward = original


def _weight_checks(label: str, theirs, ours, start, lr: float) -> list[Check]:
    """The actor weights after some updates: the largest entry difference, and the relative
    difference of the whole change ``‖Δθ − Δθ'‖ / ‖Δθ‖`` from the common ``start``.

    Adam's first steps are about ``lr·sign(g)`` per entry, so an entry whose gradient sits at
    rounding level (``|g|`` near Adam's ε = 1e-8; dead or nearly dead ReLU units) can step
    differently by up to about ``lr`` in the two code bases while every other entry agrees:
    the largest difference is bounded by ``lr``, and the change as a whole agrees to 1 %
    (one such entry is about 1e-3 of it; a difference in the math moves most entries)."""
    pairs = [(t.detach(), o.detach(), w) for t, o, w in zip(theirs, ours, start, strict=True)]
    largest = max(_max_diff(t, o) for t, o, _ in pairs)
    diff = math.sqrt(sum(float((t - o).pow(2).sum()) for t, o, _ in pairs))
    change = math.sqrt(sum(float((t - w).pow(2).sum()) for t, _, w in pairs))
    return [
        Check(f"actor weights after {label}", largest, lr, lr),
        Check(
            f"actor weight change after {label}, ‖Δθ − Δθ′‖/‖Δθ‖ (relative)",
            diff / change,
            math.nan,
            1e-2,
        ),
    ]


def check_updates(model, ours: Ours, batches: list[torch.Tensor], seed: int) -> list[Check]:
    """One update each from the same random state (loss, ``E Q̄``, actor gradients, weights);
    then ``len(batches) − 1`` more on the same batches (weights)."""
    their_params = [p for m in _our_linears(model.SRPO_policy) for p in (m.weight, m.bias)]
    our_params = [p for m in _our_linears(ours.actor) for p in (m.weight, m.bias)]
    start = [p.detach().clone() for p in their_params]
    lr = ours.optimizer.param_groups[0]["lr"]
    obs = batches[0]
    recorded: list[torch.Tensor] = []
    torch.manual_seed(seed)
    with _record_backward(recorded):
        model.update_SRPO_policy({"s": obs})
    torch.manual_seed(seed)
    out = ours.update(TensorDict({"observation": obs}, [obs.shape[0]]))
    ours.scheduler.step()
    (their_loss,) = recorded
    q = model.SRPO_policy.q  # their E Q̄ of this update
    grads = [(t.grad, o.grad) for t, o in zip(their_params, our_params, strict=True)]
    g_scale = max(_scale(t) for t, _ in grads)
    checks = [
        Check(
            "actor loss (1st update)",
            _max_diff(their_loss, out["loss_actor"]),
            _scale(their_loss),
            1e-6,
        ),
        Check("E Q̄(s, π(s)) (1st update)", _max_diff(q, out["q_mean"]), _scale(q), 1e-5),
        Check(
            "actor gradient (1st update)",
            max(_max_diff(t, o) for t, o in grads),
            g_scale,
            1e-4 * g_scale,
        ),
        *_weight_checks("1 Adam step", their_params, our_params, start, lr),
    ]
    for i, obs in enumerate(batches[1:], start=1):
        torch.manual_seed(seed + i)
        model.update_SRPO_policy({"s": obs})
        torch.manual_seed(seed + i)
        ours.update(TensorDict({"observation": obs}, [obs.shape[0]]))
        ours.scheduler.step()
    if len(batches) > 1:
        checks += _weight_checks(f"{len(batches)} updates", their_params, our_params, start, lr)
    return checks


# ------------------------------------------------------------------------------ timing


def interleaved_rates(
    contenders: dict[str, tuple[Callable[[object], object], list]],
    *,
    window: float,
    rounds: int,
    warmup: int = 2,
) -> dict[str, list[float]]:
    """``{name: [updates/s of each round]}`` for ``contenders = {name: (update, inputs)}``: every
    round runs each update for one window of ``window`` seconds (after ``warmup`` calls) on its
    inputs in turn, starting with a different contender each round."""
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, inputs = contenders[name]
            for k in range(warmup):
                fn(inputs[k % len(inputs)])
            calls, start = 0, time.perf_counter()
            while True:
                fn(inputs[calls % len(inputs)])
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= window and calls >= 3:
                    break
            rates[name].append(calls / elapsed)
    return rates


def _ratios(rates: dict[str, list[float]], name: str, reference: str) -> list[float]:
    return [a / b for a, b in zip(rates[name], rates[reference], strict=True)]


# ------------------------------------------------------------------------------ main

OFFICIAL = "official (eager)"
EAGER = "torchrl_sym (eager)"
COMPILED = "torchrl_sym (torch.compile)"


def run(args) -> tuple[list[str], dict]:
    """Build both, check they agree, time them; the page's lines and the measurements."""
    official = load_official(args.official)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    warnings.filterwarnings(  # their marginal_prob_std copies t with torch.tensor(t) each call
        "ignore", message="To copy construct from a tensor", category=UserWarning
    )
    model, their_args = build_official(official, args.obs_dim, args.action_dim)
    if their_args.WT != "VDS" or their_args.regq:
        raise RuntimeError(
            f"unexpected official defaults: WT={their_args.WT}, regq={their_args.regq}"
        )
    beta = float(their_args.beta)

    def make_ours() -> Ours:
        networks = build_networks(
            args.obs_dim,
            args.action_dim,
            policy_layers=their_args.policy_layer,
            q_layers=their_args.q_layer,
        )
        copy_official_weights(model, *networks, args.action_dim, their_args)
        return build_ours(*networks, beta=beta)

    ours = make_ours()
    compiled = None if args.no_compile else make_ours()  # its own copy, before the checks
    g = torch.Generator().manual_seed(args.seed + 1)
    pool = [torch.randn(args.batch, args.obs_dim, generator=g) for _ in range(args.pool)]
    checks = check_outputs(model, ours, pool[0], args.action_dim, args.seed + 2)
    checks += check_updates(model, ours, pool[: args.check_updates], args.seed + 3)
    for c in checks:
        print(
            f"{c.what:38s} {c.max_abs_diff:.2e}  "
            f"(official scale {c.scale:.2e}, tolerance {c.tolerance:.1e})",
            flush=True,
        )
    failed = [c for c in checks if not c.ok]
    if failed:
        raise RuntimeError(
            "the official and our SRPO disagree beyond tolerance: "
            + "; ".join(f"{c.what}: {c.max_abs_diff:.3e} > {c.tolerance:.1e}" for c in failed)
        )

    # timing, on the same pool of batches: a dict for theirs, a TensorDict of the same tensor for ours
    theirs_in = [{"s": s} for s in pool]
    ours_in = [TensorDict({"observation": s}, [s.shape[0]]) for s in pool]

    def official_update(data):
        model.update_SRPO_policy(data)  # their scheduler steps inside

    def ours_eager(td):
        ours.update(td)
        ours.scheduler.step()

    contenders = {OFFICIAL: (official_update, theirs_in), EAGER: (ours_eager, ours_in)}
    compile_s = float("nan")
    if compiled is not None:
        step = torch.compile(compiled.update)

        def ours_compiled(td):
            step(td)
            compiled.scheduler.step()

        t0 = time.perf_counter()
        for td in ours_in[:3]:  # the first call compiles; the first LR change recompiles Adam once
            ours_compiled(td)
        compile_s = time.perf_counter() - t0
        contenders[COMPILED] = (ours_compiled, ours_in)
    load_before = os.getloadavg()
    rates = interleaved_rates(contenders, window=args.window, rounds=args.rounds)
    load_after = os.getloadavg()
    summary = {
        name: {
            "median": statistics.median(r),
            "min": min(r),
            "max": max(r),
            "ratio": statistics.median(_ratios(rates, name, OFFICIAL)),
        }
        for name, r in rates.items()
    }
    for name, sm in summary.items():
        print(
            f"{name:30s} {sm['median']:7.1f} updates/s  ({sm['ratio']:.2f}x official)", flush=True
        )
    info = {
        "checks": checks,
        "rates": rates,
        "summary": summary,
        "compile_s": compile_s,
        "load": (load_before, load_after),
        "commit": official_commit(official.root),
        "their_args": their_args,
        "unused": unused_official_parameters(model, their_args.actor_blocks),
    }
    return render(args, info), info


def render(args, info) -> list[str]:
    a = info["their_args"]
    summary = info["summary"]
    rows = [
        "| update | updates/s (median) | min – max over rounds | vs official (median of per-round ratios) |",
        "|---|---|---|---|",
    ]
    for name, s in summary.items():
        rows.append(
            f"| {name} | {s['median']:.1f} | {s['min']:.1f} – {s['max']:.1f} | {s['ratio']:.2f}× |"
        )
    checks = [
        "| check | max abs difference (or relative) | max abs of the official value | tolerance |",
        "|---|---|---|---|",
    ]
    for c in info["checks"]:
        scale = "—" if math.isnan(c.scale) else f"{c.scale:.2e}"
        checks.append(f"| {c.what} | {c.max_abs_diff:.2e} | {scale} | {c.tolerance:.1e} |")
    (l1b, l5b, _), (l1a, l5a, _) = info["load"]
    ours_eager = summary[EAGER]["ratio"]
    compiled = summary.get(COMPILED)
    measured = f"ours eager / official = **{ours_eager:.2f}×**"
    best = ours_eager
    if compiled is not None:
        measured += f", ours compiled / official = **{compiled['ratio']:.2f}×**"
        best = max(best, compiled["ratio"])
    target = f"Target of issue #16 (ours at least {TARGET:g}× the official update): " + (
        "met." if best >= TARGET else f"not met (best {best:.2f}×)."
    )
    return [
        "# SRPO policy update: torchrl_sym against the official thu-ml/SRPO code",
        "",
        "<!-- generated by benchmarks/bench_srpo_official.py --write; do not edit by hand -->",
        "",
        "One update of SRPO's stage 3 (policy extraction) in both code bases, same sizes, same weights,",
        "same batches: the Dirac actor's forward, one no-grad pass of the frozen behavior ε-network at",
        "`t ~ U(0.02, 0.98)`, `∇_a ½(Q̄₁ + Q̄₂)` of the frozen twin critic, the loss",
        "`σ_t²⟨ε̂, a⟩ − β⟨∇_a Q̄, a⟩`, backward, Adam, one step of the cosine LR schedule.",
        "Official: their `SRPO.update_SRPO_policy`, imported from a clone (never vendored here), built",
        f"with their own defaults for `--env {ENV}` (β = {a.beta}, `WT={a.WT}`, actor {a.policy_layer}×256, "
        f"critic {a.q_layer}×256, ε-network {a.actor_blocks} blocks) on the CPU. Ours:",
        "`torchrl_sym.objectives.SRPOLoss` with the SRPO recipe's networks and settings, updated as the",
        "offline loop does it (`zero_grad`, `backward`, `Adam.step`, `scheduler.step`); eager and",
        "`torch.compile`d (inductor, the whole update; the scheduler steps outside it).",
        "",
        f"Command: `python benchmarks/bench_srpo_official.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} torch thread(s). Official code: thu-ml/SRPO "
        f"commit {info['commit']}. Observation {args.obs_dim}, action {args.action_dim}, batch "
        f"{args.batch}; {args.rounds} rounds of one {args.window:g} s window per update, the order "
        f"rotating every round, on a pool of {args.pool} batches. Load average (1 min / 5 min) "
        f"{l1b:.2f} / {l5b:.2f} before timing, {l1a:.2f} / {l5a:.2f} after: "
        + (
            "the machine was shared, so absolute rates are low; the per-round ratios hold under "
            "the shared load."
            if max(l1b, l1a) > 0.5
            else "a quiet machine."
        ),
        "",
        *rows,
        "",
        f"Measured: {measured}. "
        + (
            f"Compilation took {info['compile_s']:.0f} s (not timed)."
            if not math.isnan(info["compile_s"])
            else "Not compiled (`--no-compile`)."
        ),
        "",
        target,
        "",
        "## Same weights, same numbers",
        "",
        "Their weights are copied into ours by an explicit name map (`weight_map` in the script); their",
        "critic reads `[a, s]` and ours `[s, a]`, so the first critic layer's columns are permuted. "
        f"Not transferred: {', '.join(f'`{k}`' for k in info['unused']) or 'nothing'} (their",
        "`MLPResNetBlock.residual` Linear, applied only when a block changes width, which none does).",
        "Before timing, on one batch: the networks' outputs; then one update each from the same random",
        "state (both draw `t`, then `z`, from torch's global generator), and "
        f"{args.check_updates - 1} more on the same batches:",
        "",
        *checks,
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official",
        required=True,
        help=f"root of a clone of the official code ({CLONE_HINT})",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per timing window")
    parser.add_argument("--rounds", type=int, default=7, help="timing windows per update")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--obs-dim", type=int, default=OBS_DIM)
    parser.add_argument("--action-dim", type=int, default=ACT_DIM)
    parser.add_argument("--pool", type=int, default=8, help="distinct batches cycled through")
    parser.add_argument("--check-updates", type=int, default=5, help="updates compared (>= 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--write", default=None, help="write the page (markdown) to this file")
    args = parser.parse_args(argv)
    try:
        official_dir(args.official)
    except OfficialCodeError as err:
        parser.error(str(err))
    if args.check_updates < 1 or args.check_updates > args.pool:
        parser.error(
            f"--check-updates must lie in [1, --pool={args.pool}], got {args.check_updates}"
        )
    lines, _ = run(args)
    print()
    print("\n".join(lines), flush=True)
    if args.write:
        Path(args.write).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
