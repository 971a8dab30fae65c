"""Every ```python block of docs/*.md runs as written, unless marked as a fragment.

A fragment (a signature, an excerpt that uses names defined elsewhere, a block that needs the
network, a user's file, a GPU or hours) is marked by the line ``<!-- fragment: <reason> -->``
directly before its fence. The copied specifications (docs/specs/) are not ours and not run; the
README's quickstart runs in tests/test_readme.py.

Each block runs in a fresh interpreter, in a throwaway directory, with its Minari datasets and
caches there too. A ``torchrl_sym/<env>/<kind>-v<N>`` dataset that a block names is prepared first
as a small copy (1,000 transitions, as in tests/test_readme.py), so no block spends minutes
generating the full one.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))  # not docs/specs/*.md
FENCE = re.compile(r"^(\s*)```python\s*$")
MARKER = re.compile(r"^\s*<!--\s*fragment\b")
MARKER_WITH_REASON = re.compile(r"^\s*<!--\s*fragment:\s*(\S.*?)\s*-->\s*$")
GENERATED_ID = re.compile(r"torchrl_sym/[a-z0-9]+/[a-z-]+-v\d+")
# the blocks that run today; fewer means one was marked a fragment or the collection broke
MIN_RUNNABLE = 5


def _blocks():
    """(doc, 1-based line of the fence, code, fragment reason or None) for each python block."""
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if match is None:
                i += 1
                continue
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
            marker = lines[i - 1] if i > 0 and MARKER.match(lines[i - 1]) else None
            yield doc.relative_to(ROOT).as_posix(), i + 1, code, marker
            i = end + 1


BLOCKS = list(_blocks())
RUNNABLE = [
    pytest.param(code, id=f"{doc}:{line}") for doc, line, code, marker in BLOCKS if not marker
]


def test_fragment_markers_have_a_reason_and_a_block():
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if not MARKER.match(line):
                continue
            where = f"{doc.relative_to(ROOT).as_posix()}:{i + 1}"
            assert MARKER_WITH_REASON.match(line), f"{where}: write <!-- fragment: <reason> -->"
            assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), (
                f"{where}: a fragment marker must be the line directly before a ```python fence"
            )


def test_enough_blocks_run():
    assert len(BLOCKS) >= MIN_RUNNABLE + 1, [f"{d}:{n}" for d, n, _, _ in BLOCKS]
    assert len(RUNNABLE) >= MIN_RUNNABLE, [p.id for p in RUNNABLE]


@pytest.mark.parametrize("code", RUNNABLE)
def test_doc_example_runs(code, tmp_path):
    env = dict(
        os.environ,
        MINARI_DATASETS_PATH=str(tmp_path / "minari"),
        TORCHRL_SYM_DATA=str(tmp_path / "cache"),
    )
    dataset_ids = sorted(set(GENERATED_ID.findall(code)))
    if dataset_ids:
        prepare = (
            "from torchrl_sym.data.generate import generate_dataset, parse_generated_id\n"
            f"for dataset_id in {dataset_ids!r}:\n"
            "    parts = parse_generated_id(dataset_id)\n"
            "    if parts is not None:\n"
            "        family, kind, version = parts\n"
            "        generate_dataset(family, kind, num_transitions=1000, progress=False, "
            "version=version)\n"
        )
        subprocess.run(
            [sys.executable, "-c", prepare], check=True, env=env, cwd=tmp_path, timeout=120
        )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
