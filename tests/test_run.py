"""``./run``, the entry point people and CI use."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collected(*arguments: str) -> set[str]:
    """Test ids ``./run test ARGUMENTS --collect-only`` would run."""
    done = subprocess.run(
        [str(ROOT / "run"), "test", *arguments, "--collect-only", "-q", "tests/test_tus.py"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_run_test_fast_leaves_out_exactly_the_tests_marked_slow() -> None:
    everything = collected()
    slow = collected("-m", "slow")

    fast = collected("--fast")

    assert slow and fast
    assert fast == everything - slow
