"""The ``chunkstore`` command line."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from chunkstore.config import MATERIALIZE_MODES, Settings

MiB = 1024 * 1024


def _data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("CHUNKSTORE_DATA") or "data").resolve()


DATA_HELP = "data directory (default $CHUNKSTORE_DATA or ./data)"


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    """--data, --db and --blobs: which store a server-side command works on."""
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument(
        "--db",
        help="event log, projections and tokens: sqlite:///PATH or memory://"
        " (default $CHUNKSTORE_DB, else chunkstore.sqlite3 in the data directory)",
    )
    parser.add_argument(
        "--blobs",
        help="blobs, final files, tails and locks: file:///PATH or memory://"
        " (default $CHUNKSTORE_BLOBS, else the data directory)",
    )


def _store_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, the store options winning over it."""
    settings = Settings.from_env(_data_dir(args.data))
    for field, value in (("db_url", args.db), ("blobs_url", args.blobs)):
        if value:
            settings = settings.replace(**{field: value})
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    from chunkstore.lifeline import PARENT_PID_VARIABLE, STOP_TIMEOUT

    data_dir = _data_dir(args.data)
    os.environ["CHUNKSTORE_DATA"] = str(data_dir)
    # The workers read their settings from the environment.
    for name, value in (("CHUNKSTORE_DB", args.db), ("CHUNKSTORE_BLOBS", args.blobs)):
        if value:
            if value.startswith("memory:"):
                # Each worker would have a store of its own, with no token in it, gone
                # when it exits: memory:// is for the library in one process (tests).
                raise SystemExit("chunkstore serve: memory:// stores are for use in-process")
            os.environ[name] = value
    if args.materialize:
        os.environ["CHUNKSTORE_MATERIALIZE"] = args.materialize
    if args.workers > 1 and "CHUNKSTORE_TEMP_GRACE" not in os.environ:
        os.environ["CHUNKSTORE_TEMP_GRACE"] = "3600"
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # prometheus-client's multiprocess mode: each worker writes its counters to
        # files here, and /metrics sums them, whichever worker answers the scrape.
        metrics_dir = data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    settings = Settings.from_env()  # fail fast on a bad setting, before the server starts
    prepare_data_dir(settings)
    print(
        f"chunkstore serving http://{args.host}:{args.port} (data: {data_dir},"
        f" materialize: {settings.materialize})",
        file=sys.stderr,
        flush=True,
    )
    # Workers end with this process, even when it is killed (chunkstore.lifeline).
    os.environ[PARENT_PID_VARIABLE] = str(os.getpid())
    Granian(
        "api.app:create_worker_app",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        log_access=False,
        # granian closes a connection that sends part of a request's headers, or nothing
        # after a request, once this passes; the body's own deadline is api/timeouts.py.
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(settings.body_idle_timeout * 1000))
        ),
        # Without it, SIGTERM waits for every request in flight, however long a client
        # keeps one open; past it the worker is killed, which loses nothing acknowledged.
        workers_kill_timeout=STOP_TIMEOUT,
    ).serve()
    return 0


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory and its database schema once, before any worker starts:
    workers creating the schema of a fresh database side by side lost one of them to
    "database is locked" in about one start in five."""
    from chunkstore.store import open_store

    open_store(settings).close()


def cmd_token_create(args: argparse.Namespace) -> int:
    from chunkstore.durable import make_durable_dirs
    from chunkstore.store import open_store

    settings = _store_settings(args)
    make_durable_dirs(settings.data_dir)
    store = open_store(settings)
    try:
        print(store.tokens.create(args.name))
    finally:
        store.close()
    return 0


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': sizes people read at a glance."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_progress(sent: int, to_send: int, skipped: int, elapsed: float, width: int = 24) -> str:
    """One line: bar, percentage, bytes sent, bytes skipped (already on the server), rate, ETA."""
    fraction = min(1.0, sent / to_send) if to_send else 1.0
    filled = int(fraction * width)
    rate = sent / elapsed if elapsed > 0 else 0.0
    eta = human_duration((to_send - sent) / rate) if rate > 0 and sent < to_send else "--:--"
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}%"
        f" {human_bytes(sent)}/{human_bytes(to_send)} sent,"
        f" {human_bytes(skipped)} skipped (already on the server),"
        f" {human_bytes(rate)}/s, ETA {eta}"
    )


class ProgressBar:
    """A one-line progress display on a terminal, redrawn at most ten times a second.

    Workers report from their threads; a lock keeps the counts and the line whole.
    """

    def __init__(self, stream: IO[str], interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self.lock = threading.Lock()
        self.to_send = self.skipped = self.sent = 0
        self.started = self.drawn_at = 0.0
        self.visible = False

    def start(self, bytes_total: int, bytes_to_send: int) -> None:
        with self.lock:
            self.to_send, self.skipped, self.sent = bytes_to_send, bytes_total - bytes_to_send, 0
            self.started = time.monotonic()
            self.draw()

    def advance(self, bytes_sent: int) -> None:
        with self.lock:
            self.sent += bytes_sent
            if time.monotonic() - self.drawn_at >= self.interval:
                self.draw()

    def finish(self) -> None:
        with self.lock:
            if self.visible:
                self.draw()
                self.stream.write("\n")
                self.stream.flush()
                self.visible = False

    def draw(self) -> None:
        self.drawn_at = time.monotonic()
        line = render_progress(self.sent, self.to_send, self.skipped, self.drawn_at - self.started)
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self.visible = True


def _token(value: str | None) -> str:
    return value or os.environ.get("CHUNKSTORE_TOKEN") or ""


def _server(value: str | None) -> str:
    from chunkstore.client import DEFAULT_SERVER

    return value or os.environ.get("CHUNKSTORE_SERVER") or DEFAULT_SERVER


def _print_json(value: Any) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def cmd_upload(args: argparse.Namespace) -> int:
    from chunkstore.client import UploadClient

    progress = ProgressBar(sys.stderr) if not args.json and sys.stderr.isatty() else None
    client = UploadClient(
        _server(args.server),
        _token(args.token),
        parallel=args.parallel,
        chunker=args.chunker,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        progress=progress,
        cdc_avg=args.cdc_avg * 1024,
    )
    result = client.upload(args.file)
    if args.json:
        _print_json(result)
    else:
        print(
            f"uploaded {Path(args.file).name}: {human_bytes(result.bytes_total)},"
            f" sent {human_bytes(result.bytes_sent)},"
            f" {human_bytes(result.bytes_deduplicated)} deduplicated\n"
            f"upload id {result.upload_id}\nsha256    {result.sha256}"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from chunkstore.client import UploadClient

    client = UploadClient(_server(args.server), _token(args.token))
    status = client.status(args.upload_id)
    if args.json:
        _print_json(status)
        return 0
    received, total = status.get("received_count", 0), status.get("total_chunks", 0)
    lines = [
        f"upload id {status['upload_id']}",
        f"status    {status['status']} ({status.get('percentage', 0):.1f}%,"
        f" {received}/{total} chunks)",
        f"file      {status.get('filename')} ({human_bytes(status.get('total_size', 0))})",
        f"received  {human_bytes(status.get('bytes_received', 0))},"
        f" deduplicated {human_bytes(status.get('bytes_deduplicated', 0))}",
        f"expires   {status.get('expires_at')}",
    ]
    if status.get("file_path"):
        lines.append(f"path      {status['file_path']}")
    if status.get("sha256"):
        lines.append(f"sha256    {status['sha256']}")
    print("\n".join(lines))
    return 0


def _open_service(args: argparse.Namespace) -> Any:
    """The library over an existing store (these commands never create one)."""
    from chunkstore.application import UploadService
    from chunkstore.errors import InvalidRequest

    settings = _store_settings(args)
    if not settings.db_url and not settings.database_path.exists():
        raise InvalidRequest(f"no chunkstore data in {settings.data_dir}")
    return UploadService.open(settings)


def cmd_replay(args: argparse.Namespace) -> int:
    from chunkstore import replay
    from chunkstore.errors import UploadNotFound
    from chunkstore.projections import iso

    at = replay.parse_moment(args.at) if args.at else None
    service = _open_service(args)
    try:
        recorded = service.store.log.read(args.upload_id)
    finally:
        service.close()
    if not recorded:
        raise UploadNotFound(f"no upload {args.upload_id}", upload_id=args.upload_id)
    shown = [item for item in recorded if at is None or item.recorded_at <= at]
    state = replay.state_at(recorded, at)
    if not args.json:
        print(replay.format_table(shown, state))
        return 0
    for item in shown:
        _print_json(replay.entry(item))
    _print_json(
        {
            "type": "State",
            "version": state.version,
            "recorded_at": iso(shown[-1].recorded_at) if shown else None,
            "at": iso(at),
            **replay.state_summary(state),
        }
    )
    return 0


class HashProgress:
    """Audit's progress line on stderr: bytes re-hashed of the total, and the rate."""

    def __init__(self, stream: IO[str], interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.visible = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.drawn_at < self.interval:
            return
        self.drawn_at = now
        fraction = min(1.0, done / total) if total else 1.0
        filled = int(fraction * 24)
        rate = done / (now - self.started) if now > self.started else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'-' * (24 - filled)}] {fraction * 100:5.1f}%"
            f" {human_bytes(done)}/{human_bytes(total)} re-hashed, {human_bytes(rate)}/s\x1b[K"
        )
        self.stream.flush()
        self.visible = True

    def finish(self) -> None:
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _print_audit(report: Any, heading: str) -> None:
    summary = report.summary
    print(heading)
    for finding in report.findings:
        print(f"  {finding.kind:<22} {finding.subject}  {finding.detail}")
    print(
        f"  checked {summary.streams} streams, {summary.events} events,"
        f" {summary.blobs} blobs ({human_bytes(summary.blob_bytes)}),"
        f" {summary.manifests} manifests, {summary.files} files"
        f" ({human_bytes(summary.file_bytes)}) in {summary.seconds:.2f} s:"
        f" {len(report.findings)} finding{'' if len(report.findings) == 1 else 's'}"
    )


def cmd_audit(args: argparse.Namespace) -> int:
    from chunkstore import audit

    progress = HashProgress(sys.stderr) if sys.stderr.isatty() else None
    service = _open_service(args)
    try:
        if args.repair:
            before, after = audit.audit_and_repair(service, progress)
        else:
            before = after = audit.audit(service, progress)
    finally:
        service.close()
        if progress is not None:
            progress.finish()
    if args.json:
        answer = audit.report_dict(after)
        if args.repair:
            answer["before_repair"] = audit.report_dict(before)
        _print_json(answer)
    else:
        if args.repair:
            _print_audit(before, "before repair:")
            print("repairs:")
            for action in after.repairs:
                print(f"  {action}")
            _print_audit(after, "after repair:")
        else:
            _print_audit(after, "audit:")
    return 0 if after.clean else 1


def cmd_gc(args: argparse.Namespace) -> int:
    import msgspec

    from chunkstore.gc import collect

    service = _open_service(args)
    try:
        report = collect(
            service,
            hours=args.hours,
            grace=args.grace,
            dry_run=args.dry_run,
            repack_dead=args.repack_dead,
        )
    finally:
        service.close()
    if args.json:
        answer = msgspec.to_builtins(report)
        if not args.verbose:
            answer.pop("expired")
            answer.pop("swept")
            answer.pop("orphans")
        _print_json(answer)
        return 0
    verb = "would be" if report.dry_run else "were"
    print(
        f"gc{' (dry run: nothing changed)' if report.dry_run else ''}:"
        f" {report.sessions_expired} sessions {verb} expired,"
        f" {report.staging_files_removed} staging files {verb} removed,"
        f" {report.sessions_released} ended sessions older than {report.hours:g} h released,"
        f" {report.blobs_swept} of {report.blobs_examined} blobs {verb} swept"
        f" ({human_bytes(report.bytes_freed)} freed; {report.blobs_referenced} referenced,"
        f" {report.blobs_in_grace} younger than {report.grace:g} s),"
        f" {report.orphan_files_removed} orphan files {verb} removed"
        f" ({human_bytes(report.orphan_bytes_freed)}),"
        f" {report.lock_files_removed} stale lock files {verb} removed,"
        f" {report.loose_migrated} loose blobs {verb} moved into packs,"
        f" {report.packs_repacked} packs {verb} repacked and {report.packs_removed} removed"
        f" ({human_bytes(report.bytes_reclaimed)} reclaimed)"
        f" in {report.seconds:.2f} s"
    )
    if report.records_damaged:
        print(f"  {report.records_damaged} damaged records were left in place: run audit")
    if args.verbose:
        for upload_id in report.expired:
            print(f"  expired {upload_id}")
        for digest in report.swept:
            print(f"  swept   {digest}")
        for path in report.orphans:
            print(f"  orphan  {path}")
    return 0


def cmd_repack(args: argparse.Namespace) -> int:
    import msgspec

    from chunkstore.blobs import MigrationReport
    from chunkstore.errors import InvalidRequest
    from chunkstore.repack import RepackReport, repack

    service = _open_service(args)
    started = time.perf_counter()
    try:
        store = service.store
        if store.packs is None:
            raise InvalidRequest("repack: this store's blobs are not in packs")
        threshold = service.settings.repack_dead if args.dead is None else args.dead
        migrated = (
            store.blob_migration.migrate_loose()
            if store.blob_migration is not None
            else MigrationReport()
        )
        repacked = (
            RepackReport()
            if args.loose
            else repack(store.packs, threshold, locks=store.locks, wait=service.settings.lock_wait)
        )
    finally:
        service.close()
    seconds = round(time.perf_counter() - started, 3)
    if args.json:
        answer = {
            "loose_migrated": migrated.moved,
            "loose_bytes": migrated.bytes,
            "loose_damaged": migrated.damaged,
            **msgspec.to_builtins(repacked),
            "seconds": seconds,
        }
        _print_json(answer)
        return 0
    print(
        f"repack: {migrated.moved} loose blobs moved into packs"
        f" ({human_bytes(migrated.bytes)}; {migrated.damaged} damaged ones left for audit),"
        f" {repacked.packs_repacked} packs repacked and {repacked.packs_removed} removed"
        f" ({human_bytes(repacked.bytes_reclaimed)} reclaimed,"
        f" {repacked.records_damaged} damaged records left for audit) in {seconds:.2f} s"
    )
    return 0


def dead_share(value: str) -> float:
    share = float(value)
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError("must be above 0 and at most 1")
    return share


def add_store_commands(commands: Any) -> None:
    """replay, audit, gc and repack: operator commands that work on a data directory."""
    replay = commands.add_parser("replay", help="show an upload's events and state")
    replay.add_argument("upload_id")
    _add_store_options(replay)
    replay.add_argument("--json", action="store_true", help="one JSON object per line")
    replay.add_argument(
        "--at", help="ISO 8601 time (UTC unless it says): only events recorded until then"
    )
    replay.set_defaults(func=cmd_replay)

    audit = commands.add_parser("audit", help="check every event, blob, manifest and file")
    _add_store_options(audit)
    audit.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    audit.add_argument(
        "--repair",
        action="store_true",
        help="rebuild projections, restore what the evidence allows; deletes nothing",
    )
    audit.set_defaults(func=cmd_audit)

    gc = commands.add_parser("gc", help="expire stale sessions and sweep unreferenced blobs")
    _add_store_options(gc)
    gc.add_argument(
        "--hours",
        type=float,
        default=None,
        help="keep chunks of ended sessions this long (default $CHUNKSTORE_GC_HOURS or 24)",
    )
    gc.add_argument(
        "--grace",
        type=float,
        default=None,
        help="never sweep blobs younger than this, seconds (default $CHUNKSTORE_GC_GRACE or 3600)",
    )
    gc.add_argument(
        "--repack-dead",
        type=dead_share,
        default=None,
        help="repack a sealed pack once this share of it is dead"
        " (default $CHUNKSTORE_REPACK_DEAD or 0.2)",
    )
    gc.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    gc.add_argument("--verbose", action="store_true", help="list expired uploads and swept blobs")
    gc.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    gc.set_defaults(func=cmd_gc)

    repack = commands.add_parser(
        "repack", help="move loose blobs into packs and rewrite packs that are mostly dead"
    )
    _add_store_options(repack)
    repack.add_argument(
        "--loose",
        action="store_true",
        help="only move blobs stored one file each (the older layout) into packs",
    )
    repack.add_argument(
        "--dead",
        type=dead_share,
        default=None,
        help="repack a sealed pack once this share of it is dead"
        " (default $CHUNKSTORE_REPACK_DEAD or 0.2)",
    )
    repack.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    repack.set_defaults(func=cmd_repack)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", help="server URL (default $CHUNKSTORE_SERVER or http://127.0.0.1:8000)"
    )
    parser.add_argument("--token", help="bearer token (default $CHUNKSTORE_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark suite lives beside the package in a source checkout."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "suite.py").exists():
        print(
            "chunkstore bench runs from a source checkout (benchmarks/ not found)", file=sys.stderr
        )
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.suite import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chunkstore", description="Resumable, deduplicating file uploads."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    _add_store_options(serve)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.add_argument(
        "--materialize",
        choices=MATERIALIZE_MODES,
        help="what completion makes: copy (a final file) or none (the manifest is the file);"
        " default $CHUNKSTORE_MATERIALIZE or copy",
    )
    serve.set_defaults(func=cmd_serve)

    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks); --help after bench for its options",
        add_help=False,
    )
    bench.set_defaults(func=cmd_bench, bench_args=[])

    token = commands.add_parser("token", help="manage bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token; prints only the token")
    create.add_argument("name", help="the owner the token uploads as")
    _add_store_options(create)
    create.set_defaults(func=cmd_token_create)

    upload = commands.add_parser("upload", help="upload a file (resumes an interrupted run)")
    upload.add_argument("file", help="the file to upload")
    _add_client_options(upload)
    upload.add_argument("--parallel", type=positive_int, default=4, help="connections (default 4)")
    upload.add_argument(
        "--chunker", choices=["cdc", "fixed"], default="cdc", help="chunking (default cdc)"
    )
    upload.add_argument(
        "--cdc-avg",
        type=int,
        choices=[4, 8, 16, 32, 64, 128, 256, 512, 1024],
        default=64,
        metavar="KIB",
        help="average CDC chunk in KiB; min is a quarter, max four times (default 64)",
    )
    upload.add_argument(
        "--state-dir",
        help="resume state (default $XDG_STATE_HOME/chunkstore or ~/.local/state/chunkstore)",
    )
    upload.set_defaults(func=cmd_upload)

    status = commands.add_parser("status", help="show an upload's status")
    status.add_argument("upload_id")
    _add_client_options(status)
    status.set_defaults(func=cmd_status)
    add_store_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Everything after "bench" is the suite's own: argparse would claim its options.
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    from chunkstore.client import ClientError
    from chunkstore.errors import ChunkstoreError

    try:
        return int(args.func(args))
    except ChunkstoreError as error:
        print(f"chunkstore: {error.detail}", file=sys.stderr)
        return 2
    except ClientError as error:
        print(f"chunkstore: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("chunkstore: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``chunkstore replay ID | head``): stop quietly, as other
        # command-line tools do. Point stdout at /dev/null so the interpreter's final
        # flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
