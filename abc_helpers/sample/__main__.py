"""Command line: ``python -m abc_helpers.sample serve [--port N] [--latency-ms 20 --bandwidth-mbs 50]``, ``... build`` and ``... fill-mirror DIR``."""

from __future__ import annotations

import argparse
import sys
import time

from . import Link, build_world, start


def main(argv: list[str] | None = None) -> int:
    """Run the sample-world command line."""
    parser = argparse.ArgumentParser(prog="python -m abc_helpers.sample", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the sample world (once) and print its folder")
    b.add_argument("--force", action="store_true", help="rebuild even if it is built")
    s = sub.add_parser("serve", help="serve the sample world (or a mirror) until stopped")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--mirror", default=None, help="serve this cache directory instead")
    s.add_argument("--root", default=None, help="serve this built world folder (default: the sample world)")
    s.add_argument("--fault", action="append", default=[],
                   help="inject a fault, e.g. 'drop-after=1000000,key=*units.csv,count=2'")
    s.add_argument("--latency-ms", type=float, default=0.0,
                   help="model a real link: milliseconds to the first byte of each response, e.g. 20")
    s.add_argument("--bandwidth-mbs", type=float, default=0.0,
                   help="model a real link: megabytes (10**6 bytes) per second of each response "
                        "body, e.g. 50 (0: no limit)")
    from ..mirror import add_arguments as add_mirror_arguments

    m = sub.add_parser("fill-mirror", help="download real data (or any source) into a mirror folder "
                       "for `serve --mirror`")
    add_mirror_arguments(m)
    args = parser.parse_args(argv)

    if args.command == "fill-mirror":
        from ..mirror import run as fill_mirror

        try:
            print(fill_mirror(args), flush=True)
        except (ValueError, KeyError, OSError, RuntimeError) as error:  # DownloadError is a RuntimeError
            print(f"fill-mirror: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        return 0

    if args.command == "build":
        t0 = time.perf_counter()
        root = build_world(force=args.force)
        print(f"sample world: {root} ({time.perf_counter() - t0:.1f} s)")
        return 0
    faults = None
    if args.fault:
        from .faults import FaultPlan

        faults = FaultPlan.parse(args.fault)
    try:
        link = Link.from_units(latency_ms=args.latency_ms, bandwidth_mb_s=args.bandwidth_mbs)
    except ValueError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    try:
        server = start(root=args.root, host=args.host, port=args.port, faults=faults,
                       mirror=args.mirror, link=None if link.is_ideal else link)
    except OSError as error:
        print(f"serve: cannot listen on {args.host}:{args.port} ({error.strerror or error}). Pick "
              "another --port, or --port 0 for a free one.", file=sys.stderr)
        return 1
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
