"""prunelab dashboard: start the Streamlit app, headless and bound to localhost by default."""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

APP = Path(str(resources.files("dashboard").joinpath("app.py")))


def register(subparsers) -> None:
    parser = subparsers.add_parser("dashboard", help="open the interactive dashboard")
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model to open (default: digits-cnn)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.set_defaults(func=run)


def command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.maxUploadSize", "200",
            "--server.maxCacheDataSize", "256mb", "--client.toolbarMode", "minimal", "--theme.base", "light"]


def run(args) -> int:
    env = dict(os.environ)
    if args.model:
        env["PRUNELAB_MODEL"] = args.model
    print(f"prunelab dashboard on http://{'localhost' if args.address == '127.0.0.1' else args.address}:{args.port}",
          flush=True)
    # Become the server process, so a signal to `prunelab dashboard` reaches Streamlit itself
    # and no orphaned server keeps the port.
    arguments = command(args.port, args.address)
    os.execve(arguments[0], arguments, env)
    return 0
