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
    parser.add_argument("--weights", help="state dict for a file.py:factory MODEL (read with weights_only=True)")
    parser.add_argument("--input-shape", help="input shape of MODEL with batch dimension, e.g. 1,3,32,32 (or 1,64 "
                                              "tokens)")
    parser.add_argument("--data", help="data for MODEL: .npz (x and y, or input_ids) or .txt of sentences")
    parser.add_argument("--trust", action="store_true", help="allow unpickling MODEL if it is a pickled module")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--metric", metavar="FILE.py:FUNCTION",
                        help="your own quality metric for MODEL (outputs, data) -> {name: number}; it runs code "
                             "in the server, so it needs --allow-code")
    parser.add_argument("--allow-code", action="store_true",
                        help="let visitors import file.py:factory architectures and unpickle trusted modules "
                             "(each load still needs their tick); without it the dashboard runs no code from files")
    parser.add_argument("--model-root", default=".", metavar="DIR",
                        help="the folder whose files visitors may open by path (default: the current folder); "
                             "uploads are always allowed")
    parser.set_defaults(func=run)


LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")


def command(port: int, address: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "dashboard.serve", "run", str(APP), "--server.headless", "true",
            "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.maxUploadSize", "200",
            "--server.maxCacheDataSize", "256mb", "--client.toolbarMode", "minimal",
            # Streamlit collects garbage after every rerun by default: with torch loaded that is a full
            # pass over about 400,000 objects (0.25-0.34 s here) holding the interpreter lock, and the
            # measured metrics waited for it before reaching the browser. Python's own collector runs.
            "--runner.postScriptGC", "false"]


# The starting model's source options, read by the dashboard (dashboard/state.py).
SOURCE_VARIABLES = {"weights": "PRUNELAB_WEIGHTS", "input_shape": "PRUNELAB_INPUT_SHAPE", "data": "PRUNELAB_DATA"}


def metric_location(spec: str) -> str:
    """``file.py:function`` with the file's absolute path (the server may run elsewhere); ``module:function`` as is."""
    location, _, name = spec.rpartition(":")
    return f"{Path(location).resolve()}:{name}" if location.endswith(".py") else spec


def run(args) -> int:
    env = dict(os.environ)
    if args.model:
        env["PRUNELAB_MODEL"] = args.model
    elif args.weights or args.input_shape or args.data or args.trust or args.metric:
        print("prunelab: error: --weights, --input-shape, --data, --trust and --metric describe MODEL: "
              "name the model too", file=sys.stderr)
        return 2
    if args.metric and not args.allow_code:
        print(f"prunelab: error: --metric {args.metric} runs Python code in the dashboard's server: "
              f"add --allow-code to allow it", file=sys.stderr)
        return 2
    for option, variable in SOURCE_VARIABLES.items():
        value = getattr(args, option)
        env[variable] = str(Path(value).resolve()) if value and option != "input_shape" else (value or "")
    env["PRUNELAB_TRUST"] = "1" if args.trust else "0"
    env["PRUNELAB_METRIC"] = metric_location(args.metric) if args.metric else ""
    env["PRUNELAB_MODEL_ROOT"] = str(Path(args.model_root).resolve())
    env["PRUNELAB_ALLOW_CODE"] = "1" if args.allow_code else "0"
    if args.address not in LOCAL_ADDRESSES:
        print(f"prunelab: warning: listening on {args.address}: anyone who can reach this machine on port "
              f"{args.port} can use the dashboard, read files under {env['PRUNELAB_MODEL_ROOT']}"
              + (" and run code on it (--allow-code)" if args.allow_code else ""), file=sys.stderr, flush=True)
    print(f"prunelab dashboard on http://{'localhost' if args.address == '127.0.0.1' else args.address}:{args.port}",
          flush=True)
    # Become the server process, so a signal to `prunelab dashboard` reaches Streamlit itself
    # and no orphaned server keeps the port.
    arguments = command(args.port, args.address)
    os.execve(arguments[0], arguments, env)
    return 0
