"""Entry point: ``python -m parley.bench {protocol,server,kt,client} [--json] [--quick]``.

``server`` takes ``--peers prosody,ejabberd``, ``--cluster``, ``--generators N`` and
``--database-url`` (see ``parley.bench.server``). Progress goes to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parley.bench")
    parser.add_argument("suite", choices=["protocol", "server", "kt", "client"])
    parser.add_argument("--database-url", help="server: run Parley on this database, not SQLite")
    parser.add_argument(
        "--peers",
        help="server: comma-separated XMPP servers to compare with (prosody,ejabberd); "
        "also runs the 2-node Parley cluster",
    )
    parser.add_argument(
        "--cluster", action="store_true", help="server: also run the 2-node Parley cluster"
    )
    parser.add_argument(
        "--generators", type=int, default=2, help="server: load-generator processes (default 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="protocol: interleaved rounds (at least 5)"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args(argv)
    if args.suite == "protocol":
        from parley.bench.protocol import run

        result = run(quick=args.quick, rounds=args.rounds)
    elif args.suite == "client":
        from parley.bench.client import run as run_client

        result = run_client(
            quick=args.quick, log=lambda line: print(line, file=sys.stderr, flush=True)
        )
    elif args.suite == "kt":
        from parley.bench.kt import run as run_kt

        result = run_kt(quick=args.quick)
    else:
        from parley.bench.server import run as run_server

        result = run_server(
            quick=args.quick,
            database_url=args.database_url,
            peers=[p.strip() for p in args.peers.split(",") if p.strip()] if args.peers else None,
            cluster=args.cluster,
            generators=args.generators,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
