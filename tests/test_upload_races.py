"""Requests that race on one upload, on a real server: the per-upload lock decides."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import httpx

from chunkstore.events import ManifestWritten
from chunkstore.testing import MakeServer
from tests.helpers import cancel, complete, recorded_events, status_of, upload_whole

MiB = 1024 * 1024
#: Rounds at most, and the rounds cancel aims at the completion's last step. Before
#: completion and cancel took the per-upload lock, the aimed cancel landed between
#: ManifestWritten and UploadCompleted in most rounds (a cancelled upload with a file).
MAX_ROUNDS = 40
MIN_AIMED_ROUNDS = 8


def final_files(data_dir: Path, upload_id: str) -> list[Path]:
    directory = data_dir / "files" / upload_id
    return sorted(directory.iterdir()) if directory.is_dir() else []


def wait_for_manifest(data_dir: Path, upload_id: str, done: threading.Event) -> None:
    """Until completion recorded its manifest (or ended): cancel then aims at the step
    between the manifest and the final event."""
    while not done.is_set():
        if any(isinstance(e, ManifestWritten) for e in recorded_events(data_dir, upload_id)):
            return


def race_cancel_with_complete(
    client: httpx.Client, data_dir: Path, upload_id: str, aim: bool
) -> dict[str, httpx.Response]:
    """Complete in one thread, cancel in this one: at once, or aimed at the moment the
    completion recorded its manifest. Returns both answers."""
    answers: dict[str, httpx.Response] = {}
    done = threading.Event()

    def run_complete() -> None:
        try:
            answers["complete"] = complete(client, upload_id)
        finally:
            done.set()

    worker = threading.Thread(target=run_complete)
    worker.start()
    if aim:
        wait_for_manifest(data_dir, upload_id, done)
    answers["cancel"] = cancel(client, upload_id, "racing")
    worker.join(120)
    assert not worker.is_alive()
    return answers


def test_cancel_racing_complete_never_leaves_a_cancelled_upload_with_a_file(
    make_server: MakeServer,
) -> None:
    server = make_server()
    data = os.urandom(4 * MiB)
    outcomes: Counter[str] = Counter()
    aimed = 0
    with server.client("racer") as client:
        for round_number in range(MAX_ROUNDS):
            upload_id = upload_whole(client, data, MiB)
            aim = round_number % 2 == 1
            aimed += aim
            answers = race_cancel_with_complete(client, server.data_dir, upload_id, aim)
            status = status_of(client, upload_id)["status"]
            files = final_files(server.data_dir, upload_id)
            assert not (status == "cancelled" and files), (round_number, files)
            assert not (status == "completed" and not files), round_number
            # Exactly one of the two took effect, and its answer said so.
            won = {name for name, answer in answers.items() if answer.status_code == 200}
            assert won == ({"complete"} if status == "completed" else {"cancel"}), (
                status,
                {name: answer.text for name, answer in answers.items()},
            )
            outcomes[status] += 1
            if outcomes["completed"] and outcomes["cancelled"] and aimed >= MIN_AIMED_ROUNDS:
                break
    assert outcomes["completed"] and outcomes["cancelled"], outcomes
