"""Paper-budget rows (``experiment=paper``: 1M steps, stacked seeds) on a lent GPU machine, in one
prepared call: install, generate, train, collect.

The GPU machines this project is sometimes lent (docs/training.md, "GPU runs") have PyTorch and
CUDA but no package registry and none of this library's other requirements, start bare, and are
lent for about 15 minutes in all (at most 10 minutes a command). So everything is prepared here and
one command there does the rest:

    python scripts/gpu_paper.py prepare                  # here, once: wheels into .whl/ (~15 MB)
    # device tool, carry [".whl"], timeout_s 600:
    python3 scripts/gpu_paper.py run --deadline 560      # there: $OUT/paper_rows.tar.gz
    python scripts/gpu_paper.py unpack <files_at>/paper_rows.tar.gz   # here: into results/paper/
    python -m torchrl_sym.report results/paper --out docs/results_paper.md --data-stats docs/datasets.json

``prepare`` downloads, for the device machine's Python (3.12, manylinux x86-64), the wheels of this
library's requirements that its image lacks (torchrl, tensordict, gymnasium, MuJoCo, Minari, Hydra
and what they import; PyTorch, NumPy, h5py, TensorBoard, tqdm and matplotlib are there) and builds
the one that PyPI has only as a source archive (antlr4-python3-runtime 4.9.3, pure Python).

``run`` (there) installs them into a scratch folder (``--site``), writes the machine's description
(``env.txt``), generates the dataset of ``--task`` unless it exists, then trains each row of
``--rows`` in turn: ``python recipes/<algo>.py experiment=paper task=<task> seed=<seed>
stack_seeds=<K> device=cuda cudagraphs=true`` plus the row's variant, with
``eval.interval=--eval-interval`` and ``eval.last_k=--last-k`` (on the GPU an update takes well
under a millisecond and the paper's evaluation every 5k steps would cost more than the training:
the rows say so in their config.yaml). Every row runs under the deadline (``--deadline`` seconds
after ``run`` started): a row the deadline stops keeps its checkpoints (every 50k steps), and a
second ``run`` on the still-warm machine (within its 30 s) resumes it. At the end, or at the
deadline, finished seeds' logs are mirrored (``scripts/collect_results.py``) and unfinished ones
recorded as in flight, and both are packed into ``$OUT/paper_rows.tar.gz`` (``--out``) with
``env.txt`` and each row's console log.

``unpack`` (here) extracts that archive's finished runs into ``results/paper/<task>/<algo>/`` and
its in-flight runs into ``results/paper_in_flight/`` (never over an existing file).

``--device cpu --steps N`` (and ``--dataset``) runs the same pipeline on a CPU with a tiny budget,
without CUDA graphs: tests/test_gpu_paper.py does, so the script that a GPU window depends on is
tested on every CI run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Not in the device image (docs/training.md names what is), pinned to what this library is tested
# with; no dependencies are resolved there (pip --no-deps), so this list is the closure.
WHEELS = (
    "torchrl==0.14.1",
    "tensordict==0.14.3",
    "hoptorch==0.1.4",
    "pyvers==0.2.3",
    "orjson==3.13.0",
    "gymnasium==1.4.0",
    "farama-notifications==0.0.6",
    "mujoco==4.0.1",
    "mujoco-core==4.0.1",
    "glfw==2.11.0",
    "minari==0.5.4",
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
)
SDISTS = ("antlr4-python3-runtime==4.9.3",)  # PyPI has no wheel: built here (pure Python)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
ARCHIVE = "paper_rows.tar.gz"


def prepare(args) -> int:
    dest = Path(args.wheels)
    dest.mkdir(parents=True, exist_ok=True)
    platform = [x for p in PLATFORMS for x in ("--platform", p)] + ["--platform", "any"]
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    base += ["--python-version", args.python_version, "--implementation", "cp", *platform]
    subprocess.run([*base, "-d", str(dest), *WHEELS], check=True)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *SDISTS]
    subprocess.run(build, check=True)
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}")
    if size > 48 * 2**20:
        print("warning: over 48 MiB; the device tool carries 64 MiB with the working tree")
    return 0


def _install(wheels: Path, site: Path) -> dict:
    """The environment of the children: the wheels installed into ``site`` (once) first on the
    path, then the checkout."""
    env = dict(os.environ)
    marker = site / ".installed"
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if found and not marker.exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        pip += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site)]
        subprocess.run([*pip, *map(str, found)], check=True)
        marker.touch()
    paths = ([str(site)] if found else []) + [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("MUJOCO_GL", "egl")
    return env


def _describe(env: dict, path: Path) -> None:
    code = (
        "import sys, torch, torchrl, tensordict, gymnasium, mujoco, minari; "
        "print('python', sys.version.split()[0]); "
        "print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); "
        "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None); "
        "print('torchrl', torchrl.__version__, 'tensordict', tensordict.__version__, "
        "'gymnasium', gymnasium.__version__, 'mujoco', mujoco.__version__, "
        "'minari', minari.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    text = out.stdout + out.stderr
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        text += subprocess.run(query, capture_output=True, text=True, check=False).stdout
    text += f"cpus {os.cpu_count()}\n"
    path.write_text(text)
    print(text, end="", flush=True)
    if out.returncode:
        raise SystemExit(f"gpu_paper: the installed packages do not import:\n{out.stderr}")


def _row_dir(runs: Path, task: str, row: str, stack: int) -> tuple[str, str | None, Path]:
    algo, _, variant = row.partition(":")
    override = None
    if variant:  # sfac:js -> sfac.divergence=js; algo:key=value -> algo.key=value
        key, _, value = variant.partition("=")
        override = f"{algo}.{key}={value}" if value else f"{algo}.divergence={key}"
    name = (override.rsplit("=", 1)[1] if override else "run") + f"_stack{stack}"
    return algo, override, runs / task / algo / name


def run(args) -> int:
    start = time.monotonic()
    out = Path(args.out or os.environ.get("OUT") or "paper_out")
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs)
    env = _install(Path(args.wheels), Path(args.site))
    _describe(env, out / "env.txt")
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    def left() -> float:
        return args.deadline - (time.monotonic() - start)

    if args.dataset is None:
        family, _, kind = args.task.partition("-")
        gen = (  # the task's dataset at the newest version, kept where it exists
            "from torchrl_sym.data.generate import generate_dataset; "
            f"print(generate_dataset({family!r}, {kind!r}, exist_ok=True, progress=False))"
        )
        subprocess.run([sys.executable, "-c", gen], env=env, check=True, timeout=max(left(), 1))
    for row in args.rows:
        algo, override, run_dir = _row_dir(runs, args.task, row, args.stack)
        if left() < 30:
            print(f"{row}: skipped, {left():.0f} s left", flush=True)
            continue
        if (run_dir / "stack.yaml").exists() or (run_dir / "config.yaml").exists():
            cmd = [f"resume={run_dir}"]
        else:
            cmd = ["experiment=paper", f"task={args.task}", f"seed={args.seed}"]
            cmd += [f"stack_seeds={args.stack}", f"device={args.device}"]
            cmd += [f"eval.interval={args.eval_interval}", f"eval.last_k={args.last_k}"]
            cmd += ["logger.backend=csv", "train.progress=false", f"hydra.run.dir={run_dir}"]
            if args.device == "cuda":
                cmd.append("cudagraphs=true")
            if override:
                cmd.append(override)
            if args.dataset:
                cmd.append(f"dataset={args.dataset}")
            if args.steps:
                cmd.append(f"train.steps={args.steps}")
            cmd += list(args.override)
        full = [sys.executable, str(ROOT / "recipes" / f"{algo}.py"), *cmd]
        print(f"{row}: {' '.join(full[1:])}", flush=True)
        t0 = time.monotonic()
        with open(logs / f"{args.task}_{run_dir.parent.name}_{run_dir.name}.log", "a") as log:
            proc = subprocess.Popen(full, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            try:
                code = proc.wait(timeout=max(left() - 15, 1))  # 15 s kept for collecting
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                code = "stopped at the deadline"
        print(f"{row}: {code} after {time.monotonic() - t0:.0f} s", flush=True)
    collect = [sys.executable, str(ROOT / "scripts" / "collect_results.py")]
    staged = out / "staged"
    for row in args.rows:
        algo, _, run_dir = _row_dir(runs, args.task, row, args.stack)
        if run_dir.exists():
            dst = staged / "finished" / args.task / algo / run_dir.name
            subprocess.run([*collect, str(run_dir), str(dst)], env=env, check=False)
    if runs.exists():
        flight = [*collect, "--in-flight", str(runs), str(staged / "in_flight")]
        subprocess.run(flight, env=env, check=False)
    with tarfile.open(out / ARCHIVE, "w:gz") as tar:
        for name in ("env.txt", "logs", "staged"):
            if (out / name).exists():
                tar.add(out / name, arcname=name)
    shutil.rmtree(staged, ignore_errors=True)  # the logs stay: a second call appends to them
    print(f"packed {out / ARCHIVE} after {time.monotonic() - start:.0f} s", flush=True)
    return 0


def unpack(args) -> int:
    results = Path(args.results)
    with tarfile.open(args.archive) as tar:
        members = tar.getmembers()
        for m in members:
            if (
                not (m.isfile() or m.isdir())
                or m.name.startswith("/")
                or ".." in Path(m.name).parts
            ):
                raise SystemExit(f"gpu_paper: refusing archive member {m.name!r}")
        written = 0
        for m in members:
            if not m.isfile():
                continue
            parts = Path(m.name).parts
            if parts[:2] == ("staged", "finished"):
                dest = results / "paper" / Path(*parts[2:])
            elif parts[:2] == ("staged", "in_flight"):
                dest = results / "paper_in_flight" / Path(*parts[2:])
            else:  # env.txt, logs/: beside the runs
                dest = results / "paper" / "device" / Path(*parts)
            if dest.exists():
                print(f"kept {dest} (exists)")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            with tar.extractfile(m) as src, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f)
            tmp.replace(dest)
            written += 1
    print(f"{written} files under {results}/paper and {results}/paper_in_flight")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the wheels the device machine lacks")
    p.add_argument("--wheels", default=str(ROOT / ".whl"))
    p.add_argument("--python-version", default="3.12")
    p = sub.add_parser("run", help="install, generate, train, collect (on the GPU machine)")
    p.add_argument("--task", default="hopper-medium")
    p.add_argument("--rows", nargs="+", default=["iql", "sfac:js", "sfac:jeffreys"],
                   help="algo or algo:variant (sfac:js = sfac.divergence=js), trained in turn")  # fmt: skip
    p.add_argument("--stack", type=int, default=5, help="stack_seeds (seeds --seed .. +K-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole call")
    p.add_argument("--eval-interval", type=int, default=25_000)
    p.add_argument("--last-k", type=int, default=2, help="final score: the last k evaluations")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=None, help="train.steps (default: the paper's)")
    p.add_argument("--dataset", default=None, help="a local dataset id instead of generating")
    p.add_argument("--override", nargs="*", default=[], help="more recipe overrides")
    p.add_argument("--wheels", default=str(ROOT / ".whl"))
    p.add_argument("--site", default="/tmp/site")
    p.add_argument("--runs", default="/tmp/paper_runs")
    p.add_argument("--out", default=None, help="where the archive goes (default: $OUT)")
    p = sub.add_parser("unpack", help="the returned archive into results/")
    p.add_argument("archive")
    p.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    if args.command == "run" and args.stack < 1:
        parser.error(f"--stack must be >= 1, got {args.stack}")
    return {"prepare": prepare, "run": run, "unpack": unpack}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
