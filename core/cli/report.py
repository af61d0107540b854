"""prunelab report: one self-contained HTML file about chosen runs, for people who were not there."""
from __future__ import annotations

from core.api import write_report


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of recorded runs")
    parser.add_argument("ids", type=int, nargs="+", metavar="ID", help="run ids (see prunelab runs)")
    parser.add_argument("--out", default="report.html", help="where to write it (default report.html)")
    parser.add_argument("--title", default="Pruning report")
    parser.set_defaults(func=run)


def run(args) -> int:
    path = write_report(args.ids, args.out, args.title)
    print(f"wrote {path} ({path.stat().st_size:,} bytes, opens without a network)")
    return 0
