"""The event log's backends against its contracts (``tests/contracts/eventlog.py``), and
what only the SQLite backend promises: its file, and the raw rows in it."""

from __future__ import annotations

import json
from pathlib import Path

from chunkstore.eventlog.memory import MemoryLog
from chunkstore.eventlog.sqlite import SQLiteLog
from chunkstore.events import ChunkStored, UnknownEvent
from chunkstore.projections import iso
from tests.contracts.eventlog import (
    D0,
    NOW,
    EventLogContract,
    SessionIndexContract,
    SweepGuardContract,
    append,
    initiated,
    state_of,
)


class TestMemoryLog(EventLogContract, SessionIndexContract, SweepGuardContract):
    def make_log(self, tmp_path: Path) -> MemoryLog:
        return MemoryLog()


class TestSQLiteLog(EventLogContract, SessionIndexContract, SweepGuardContract):
    def make_log(self, tmp_path: Path) -> SQLiteLog:
        return SQLiteLog(tmp_path / "events.sqlite3")

    def test_a_second_log_on_the_same_file_sees_the_events(
        self, log: SQLiteLog, tmp_path: Path
    ) -> None:
        append(log, "u1", [initiated()])

        other = SQLiteLog(tmp_path / "events.sqlite3")
        try:
            assert [r.event for r in other.read("u1")] == [initiated()]
            assert other.session_row("u1") == log.session_row("u1")
        finally:
            other.close()

    def test_a_reopened_log_goes_on_from_its_last_position(
        self, log: SQLiteLog, tmp_path: Path
    ) -> None:
        append(log, "u1", [initiated()])
        append(log, "u2", [initiated("bob")])
        log.close()

        reopened = SQLiteLog(tmp_path / "events.sqlite3")
        try:
            append(reopened, "u1", [ChunkStored(0, D0, 1000)])
            assert [(r.stream_id, r.version, r.position) for r in reopened.read_all()] == [
                ("u1", 1, 1),
                ("u2", 1, 2),
                ("u1", 2, 3),
            ]
        finally:
            reopened.close()

    def test_events_are_stored_as_their_type_and_json_record(self, log: SQLiteLog) -> None:
        append(log, "u1", [initiated(), ChunkStored(0, D0, 1000)])

        rows = (
            log.db.connection()
            .execute("SELECT stream_id, version, position, type, data FROM events")
            .fetchall()
        )

        assert [row[:4] for row in rows] == [
            ("u1", 1, 1, "UploadInitiated"),
            ("u1", 2, 2, "ChunkStored"),
        ]
        assert json.loads(rows[1][4]) == {
            "type": "ChunkStored",
            "index": 0,
            "digest": D0,
            "size": 1000,
            "reused": False,
        }

    def test_an_event_of_a_type_from_a_newer_version_is_read_as_unknown(
        self, log: SQLiteLog
    ) -> None:
        append(log, "u1", [initiated()])
        with log.db.write() as conn:
            conn.execute(
                "INSERT INTO events (stream_id, version, position, type, data, recorded_at)"
                " VALUES ('u1', 2, 2, 'ChunkPinned', ?, ?)",
                (json.dumps({"type": "ChunkPinned", "digest": D0, "until": "2031"}), iso(NOW)),
            )

        (recorded,) = log.read("u1", after_version=1)

        assert recorded.event == UnknownEvent("ChunkPinned", {"digest": D0, "until": "2031"})
        assert recorded.recorded_at == NOW
        assert [r.event for r in log.read_all(after_position=1)] == [recorded.event]
        # It still counts towards the stream's version: the next append goes after it.
        assert state_of(log, "u1").version == 2
        append(log, "u1", [ChunkStored(0, D0, 1000)])
        assert [r.version for r in log.read("u1")] == [1, 2, 3]
