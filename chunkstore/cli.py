"""The ``chunkstore`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chunkstore.config import Settings


def _data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("CHUNKSTORE_DATA") or "data").resolve()


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    data_dir = _data_dir(args.data)
    os.environ["CHUNKSTORE_DATA"] = str(data_dir)
    if args.workers > 1 and "CHUNKSTORE_TEMP_GRACE" not in os.environ:
        os.environ["CHUNKSTORE_TEMP_GRACE"] = "3600"
    Settings.from_env()  # fail fast on a bad setting, before the server starts
    print(
        f"chunkstore serving http://{args.host}:{args.port} (data: {data_dir})",
        file=sys.stderr,
        flush=True,
    )
    Granian(
        "api.app:create_app",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        log_access=False,
    ).serve()
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from chunkstore.auth import TokenStore
    from chunkstore.blobs.filesystem import make_durable_dirs

    settings = Settings.from_env(_data_dir(args.data))
    make_durable_dirs(settings.data_dir)
    print(TokenStore(settings.database_path).create(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chunkstore", description="Resumable, deduplicating file uploads."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data", help="data directory (default $CHUNKSTORE_DATA or ./data)")
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.set_defaults(func=cmd_serve)

    token = commands.add_parser("token", help="manage bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="create a token; prints only the token")
    create.add_argument("name", help="the owner the token uploads as")
    create.add_argument("--data", help="data directory (default $CHUNKSTORE_DATA or ./data)")
    create.set_defaults(func=cmd_token_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chunkstore.errors import ChunkstoreError

    try:
        return int(args.func(args))
    except ChunkstoreError as error:
        print(f"chunkstore: {error.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
