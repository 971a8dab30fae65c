"""The results tables in docs/ are the ones scripts/make_doc_tables.py generates from the runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_tables_are_generated_from_the_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_doc_tables.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_render_rewrites_a_block_and_rejects_unknown_tables():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_doc_tables
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    text = "before\n<!-- table:toy2d_srpo -->\nstale\n<!-- /table -->\nafter\n"
    out = make_doc_tables.render(text)
    assert "stale" not in out and out.startswith("before\n") and out.endswith("after\n")
    assert "| moons |" in out
    try:
        make_doc_tables.render("<!-- table:nope -->\n<!-- /table -->")
    except SystemExit as err:
        assert "unknown table 'nope'" in str(err)
    else:
        raise AssertionError("an unknown table name must fail")
