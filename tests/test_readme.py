"""The README's quickstart runs as written, and its set-up commands match .ci/run."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_runs(tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    # a small copy of the embedded default, so the test does not spend minutes generating 1M steps
    env = dict(
        os.environ,
        MINARI_DATASETS_PATH=str(tmp_path / "minari"),
        TORCHRL_SYM_DATA=str(tmp_path / "cache"),
    )
    prepare = "from torchrl_sym.data.generate import generate_dataset\ngenerate_dataset('hopper', 'medium', num_transitions=1000, progress=False)\n"
    subprocess.run([sys.executable, "-c", prepare], check=True, env=env, cwd=tmp_path, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = [
        float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", proc.stdout.splitlines()[-1])
    ]
    assert len(scores) == 2 and all(-10 < s < 100 for s in scores)


def test_ci_runs_the_readme_test_commands():
    """The README's test block holds the default run and the slow tests, one command a line; CI
    ends with exactly those commands, in that order."""
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_commands = commands[1].strip().splitlines()
    assert test_commands == ["python -m pytest -n auto", "python -m pytest -n auto -m slow"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-2:] == test_commands
    assert "`python -m pytest -m reproduction`" in README
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[dev]"' in ci
    assert "torch==2.13.0" in commands[0] and 'pip install -e ".[dev]"' in commands[0]
