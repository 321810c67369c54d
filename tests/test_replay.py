"""``chunkstore replay``: a session's events as a timeline, and its state at a moment."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chunkstore.events import UploadCancelled
from chunkstore.replay import parse_moment, state_at
from tests.helpers import FakeClock
from tests.test_audit import (
    TTL,
    KiB,
    Store,
    build_store,
    open_service,
    run_cli,
    send,
    start,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(tmp_path_factory.mktemp("replay") / "data")


def replay_json(data_dir: Path, upload_id: str, *extra: str) -> list[dict[str, Any]]:
    result = run_cli("replay", upload_id, "--data", str(data_dir), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def types(lines: list[dict[str, Any]]) -> list[str]:
    return [line["type"] for line in lines]


def test_every_line_has_version_type_and_recorded_at(store: Store) -> None:
    lines = replay_json(store.data_dir, store.completed)

    for line in lines:
        assert {"version", "type", "recorded_at"} <= set(line)
    assert [line["version"] for line in lines[:-1]] == list(range(1, 10))


def test_a_completed_upload_replays_init_chunks_manifest_completion(store: Store) -> None:
    lines = replay_json(store.data_dir, store.completed)

    assert types(lines) == [
        "UploadInitiated",
        *["ChunkStored"] * 6,
        "ManifestWritten",
        "UploadCompleted",
        "State",
    ]
    assert [line["index"] for line in lines[1:7]] == list(range(6))
    assert lines[-1]["status"] == "completed"
    assert lines[-1]["file_path"] == f"files/{store.completed}/file.bin"


def test_a_failed_validation_replays_with_its_reason(store: Store) -> None:
    lines = replay_json(store.data_dir, store.failed)

    assert types(lines)[-3:] == ["ManifestWritten", "ValidationFailed", "State"]
    assert lines[-2]["reason"] == "hash-mismatch"
    assert lines[-1]["status"] == "failed"
    assert lines[-1]["failure_reason"] == "hash-mismatch"


def test_a_cancelled_upload_replays_with_its_reason(store: Store) -> None:
    lines = replay_json(store.data_dir, store.cancelled)

    assert types(lines) == ["UploadInitiated", "ChunkStored", "UploadCancelled", "State"]
    assert lines[-2]["reason"] == "changed my mind"
    assert lines[-1]["status"] == "cancelled"


def test_an_expired_upload_replays_the_expiry_gc_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    clock = FakeClock(datetime.now(UTC))
    service = open_service(data_dir, clock)
    upload_id = start(service, b"x" * 2 * KiB)
    send(service, upload_id, b"x" * 2 * KiB, 1)
    clock.advance(TTL + 1)
    service.expire_upload(upload_id)
    service.close()

    lines = replay_json(data_dir, upload_id)

    assert types(lines) == ["UploadInitiated", "ChunkStored", "UploadExpired", "State"]
    assert lines[-1]["status"] == "expired"


def test_at_shows_the_state_as_it_was_then(store: Store) -> None:
    lines = replay_json(store.data_dir, store.completed)
    third = lines[2]["recorded_at"]

    then = replay_json(store.data_dir, store.completed, "--at", third)

    assert types(then) == ["UploadInitiated", "ChunkStored", "ChunkStored", "State"]
    assert then[-1]["version"] == 3
    assert then[-1]["status"] == "active"
    assert then[-1]["received_chunks"] == 2
    assert then[-1]["at"] == third


def test_at_before_the_first_event_shows_no_session_yet(store: Store) -> None:
    lines = replay_json(store.data_dir, store.completed, "--at", "2000-01-01T00:00:00")

    assert types(lines) == ["State"]
    assert lines[0]["status"] == "new" and lines[0]["version"] == 0


def test_the_table_lists_each_event_and_the_state(store: Store) -> None:
    result = run_cli("replay", store.cancelled, "--data", str(store.data_dir))

    assert result.returncode == 0
    rows = result.stdout.splitlines()
    assert rows[0].split()[:3] == ["#", "recorded", "at"]
    assert rows[1].split()[2] == "UploadInitiated"
    assert "reason=changed my mind" in rows[3]
    assert "  status              cancelled" in result.stdout


def test_an_unknown_upload_is_an_error(store: Store) -> None:
    result = run_cli("replay", "0" * 32, "--data", str(store.data_dir))

    assert result.returncode == 2
    assert "no upload" in result.stderr


def test_an_event_of_a_future_version_is_shown_not_fatal(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    build = build_store(data_dir)
    with sqlite3.connect(data_dir / "chunkstore.sqlite3") as conn:
        conn.execute(
            "INSERT INTO events (stream_id, version, position, type, data, recorded_at)"
            " VALUES (?, 4, (SELECT MAX(position) + 1 FROM events), 'UploadTagged',"
            ' \'{"type":"UploadTagged","tag":"blue"}\', \'2099-01-01T00:00:00.000000Z\')',
            (build.cancelled,),
        )

    lines = replay_json(data_dir, build.cancelled)

    assert types(lines)[-2:] == ["UploadTagged", "State"]
    assert lines[-2]["tag"] == "blue"
    assert lines[-1]["status"] == "cancelled" and lines[-1]["version"] == 4


def test_state_at_is_the_fold_of_events_recorded_until_then(tmp_path: Path) -> None:
    service = open_service(tmp_path / "data")
    upload_id = start(service, b"y" * KiB)
    service.cancel_upload("alice", upload_id, "no")
    recorded = service.store.log.read(upload_id)
    service.close()

    assert state_at(recorded, None).status == "cancelled"
    assert state_at(recorded, recorded[0].recorded_at).status == "active"
    assert state_at(recorded, recorded[0].recorded_at).upload_id == upload_id
    assert isinstance(recorded[-1].event, UploadCancelled)


def test_parse_moment_reads_utc_and_offsets() -> None:
    assert parse_moment("2030-01-01T12:00:00Z") == datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert parse_moment("2030-01-01T12:00:00") == datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert parse_moment("2030-01-01T14:00:00+02:00") == datetime(2030, 1, 1, 12, tzinfo=UTC)


def test_replay_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    # `chunkstore replay ID | head`: the reader closes the pipe after a few lines.
    import os
    import subprocess
    import sys

    from chunkstore.application import UploadService
    from chunkstore.commands import InitRequest
    from chunkstore.config import Settings

    service = UploadService.open(Settings(data_dir=tmp_path / "data"))
    data = os.urandom(3000)
    state = service.init_upload(
        "alice", InitRequest(filename="a.bin", total_size=3000, chunk_size=1)
    )
    for index in range(3000):
        service.store_chunk("alice", state.upload_id, index, data[index : index + 1])
    service.close()

    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chunkstore.cli",
            "replay",
            state.upload_id,
            "--data",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    first = reader.stdout.readline()
    reader.stdout.close()
    _, errors = reader.communicate(timeout=60)

    assert first
    assert reader.returncode == 0
    assert b"Traceback" not in errors
