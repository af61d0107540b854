"""Arguments shared by the subcommands that take a MODEL."""
from __future__ import annotations

import argparse
import json
import sys

from core.api import ModelHandle, load_model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a built-in name, file.py:factory, module:factory, a .pt2, a trusted .pt, or an .onnx")
    parser.add_argument("--weights", help="state dict for a file.py:factory model (read with weights_only=True)")
    parser.add_argument("--input-shape", help="input shape with batch dimension, e.g. 1,3,32,32")
    parser.add_argument("--data", help=".npz with x and y (optionally x_train, y_train, x_val, y_val, and "
                                       "x_calibration: unlabelled items for calibration alone)")
    parser.add_argument("--trust", action="store_true", help="allow unpickling a full module (runs code from the file)")
    parser.add_argument("--stride", type=int,
                        help="causal language models: start a test window every N tokens and score only the "
                             "tokens the previous window did not (sliding-window perplexity; default: the "
                             "context length, windows apart)")


def model_from(args: argparse.Namespace) -> ModelHandle:
    return load_model(args.model, input_shape=args.input_shape, weights=args.weights, trust=args.trust,
                      data=args.data, stride=getattr(args, "stride", None), metric=getattr(args, "metric", None))


def add_metric_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", help="your own metric, file.py:function(outputs, data) -> {name: number}, "
                                         "reported beside accuracy wherever the model is measured (see the README)")


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
