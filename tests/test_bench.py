"""The benchmark suite runs end to end and writes what it promises: a smoke run of its
cheapest group through ``chunkstore bench``, as a user would start it, and what it
imports on the way needs no test framework."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_chunkstore_bench_writes_results_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "chunkstore.cli", "bench", "--quick", "--runs", "1"]
        + ["--only", "eventlog", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    results = json.loads((out / "results.json").read_text())
    cases = {case["name"]: case for case in results["cases"]}
    append = cases["event log append, 1 transaction per chunk"]
    bare = cases[append["baseline"]]
    assert append["unit"] == "events/s" and append["figure"] > 0
    assert append["ratio"] == pytest.approx(append["figure"] / bare["figure"], rel=1e-3)
    audit = cases["audit re-hash of blobs"]
    assert audit["unit"] == "GB/s" and audit["figure"] > 0 and audit["ratio"] > 0
    assert results["meta"]["versions"]["granian"]
    table = (out / "results.md").read_text()
    assert "| event log | replay (read + decode + fold every stream) |" in table
    assert (out / "eventlog.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (goal,) = [t for t in results["targets"] if t["target"].startswith("audit re-hash")]
    assert goal["figure"] == pytest.approx(audit["ratio"], rel=1e-2)
    assert goal["met"] == (goal["figure"] >= 0.7)
    assert "| target | figure | goal | met |" in table


def test_targets_divide_the_named_cases_and_say_whether_each_goal_is_met() -> None:
    from benchmarks.suite import CEILING, targets

    def row(name: str, figure: float, group: str = "throughput", baseline: str = "") -> dict:  # type: ignore[type-arg]
        return {"name": name, "figure": figure, "group": group, "baseline": baseline or None}

    rows = [
        row(CEILING, 300),
        row("chunkstore raw chunks, 1 connection", 270),
        row("chunkstore tus (tuspy)", 200),
        row("files on disk per GiB stored", 33, "memory"),
        row("server peak RSS, 256 MiB raw upload", 80, "memory"),
        row(
            "server peak RSS, 4096 MiB raw upload",
            100,
            "memory",
            "server peak RSS, 256 MiB raw upload",
        ),
    ]
    found = {goal["target"]: goal for goal in targets(rows)}
    assert found["raw chunks, 1 connection, against the durable ceiling"]["figure"] == 0.9
    assert found["raw chunks, 1 connection, against the durable ceiling"]["met"] is True
    assert found["tus (tuspy) against raw chunks, 1 connection"]["met"] is False  # 0.74
    assert found["files on disk per GiB stored"]["met"] is True
    flat = found["server peak RSS, 4096 MiB raw upload: flat"]
    assert flat["figure"] == 1.25 and flat["met"] is False
    assert found["server peak RSS, 4096 MiB raw upload under 150 MiB"]["met"] is True
    # A target whose cases this run did not measure is left out, not failed.
    assert not any("tuspyserver" in name for name in found)


#: ``chunkstore bench --help`` with pytest unimportable, as where it is not installed (a
#: ``None`` in sys.modules makes ``import pytest`` fail). The bench command imports the
#: whole suite, the server harness with it, before the suite parses its options; the
#: last line names any module of the test suite that came along.
WITHOUT_PYTEST = """
import sys
sys.modules["pytest"] = sys.modules["_pytest"] = None
from chunkstore.cli import main
try:
    main(["bench", "--help"])
finally:
    print(sorted(name for name in sys.modules if name.partition(".")[0] == "tests"))
"""


def test_chunkstore_bench_loads_its_suite_and_harness_without_pytest(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "--only {throughput,memory,dedup,eventlog}" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"
