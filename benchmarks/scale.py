"""Sweeps and plan grids on more cores: serial against local worker processes against a local Ray cluster.

- digits-resnet's default unstructured sweep (11 levels, every val item): serially, with
  ``--workers 2`` and as Ray tasks on a head started here on 127.0.0.1 with 2 CPUs; wall time,
  speedup and whether the curves are equal point for point. Each run starts with an empty cache.
- ``prunelab explore``'s default grid (24 plans) on digits-resnet with 2 workers.
- With ``--resnet50`` instead (about 10 minutes here, so not part of ``make bench``): for a
  ResNet-50-sized model (transformers' ResNetConfig, random weights, 224x224) the jobs per sweep,
  the time of one channel job measured here and the bytes each worker receives, kept in
  scale_resnet50.json; every run then prints the sweep time on N nodes estimated from them.

    python -m benchmarks.scale [--quick | --resnet50] [--levels 0,0.5,0.9]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table
from core.search.explore import DEFAULT_GRID, explore
from core.search.sensitivity import DEFAULT_LEVELS, sensitivity
from core.sources import load_model

QUICK_LEVELS = (0.0, 0.5)
RESNET50_FIGURES = Path(__file__).resolve().parent / "scale_resnet50.json"  # written by --resnet50


def fresh_home() -> None:
    os.environ["PRUNELAB_HOME"] = tempfile.mkdtemp(prefix="prunelab-bench-")


def points(result: dict) -> list[tuple]:
    return [(layer["name"], point["sparsity"], point["accuracy"], point["loss"])
            for layer in result["layers"] for point in layer["curve"]]


def start_ray_head(environment: dict | None = None) -> tuple[subprocess.Popen, str, str]:
    """A Ray head on 127.0.0.1 with 2 CPUs in a session of its own; (process, address, temp folder).

    ``environment`` replaces the head's environment (default: this one). RuntimeError carries Ray's
    last words when the head does not start.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # Ray's socket paths must stay short
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", folder], env=environment, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, errors = head.communicate(timeout=180)
    if head.returncode != 0:
        stop_ray_head(head)
        raise RuntimeError(f"ray start failed: {errors.decode()[-500:]}")
    return head, f"127.0.0.1:{port}", folder


def stop_ray_head(head: subprocess.Popen) -> None:
    """End every process of the head's session (Ray's workers have process groups of their own)."""
    import ray

    ray.shutdown()
    for sent in (signal.SIGTERM, signal.SIGKILL):
        members = session_processes(head.pid)
        for pid in members:
            try:
                os.kill(pid, sent)
            except ProcessLookupError:
                continue
        if not members:
            return
        time.sleep(3)


def session_processes(session: int) -> list[int]:
    """Process ids in the session ``session`` (the processes started with start_new_session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sweeps(levels, quick: bool) -> None:
    model = "digits-cnn" if quick else "digits-resnet"
    resnet = load_model(model)
    rows, results = [], {}
    head, address, folder = start_ray_head()
    try:
        for name, options in (("serial (--workers 1)", {"workers": 1}), ("--workers 2", {"workers": 2}),
                              ("Ray, 2 local CPUs", {"ray_address": address})):
            fresh_home()
            started = time.perf_counter()
            results[name] = sensitivity(resnet, levels=levels, max_items=60 if quick else "auto", **options)
            rows.append([name, time.perf_counter() - started])
    finally:
        stop_ray_head(head)
    serial = rows[0][1]
    same = {name: points(result) == points(results["serial (--workers 1)"]) for name, result in results.items()}
    jobs = 1 + len(results["--workers 2"]["layers"]) * (len(levels) - 1)
    print(f"{model}, unstructured sweep, {len(levels)} levels, {jobs} jobs, "
          f"{results['--workers 2']['evaluated_on']['items']} val items per point; "
          f"{results['--workers 2']['evaluated_on']['transfer_bytes'] / 1e6:.1f} MB sent to each worker:")
    print_table(["run", "wall s", "speedup", "curves equal to serial"],
                [[name, seconds, serial / seconds, "yes" if same[name] else "NO"] for name, seconds in rows])


def grid(quick: bool) -> None:
    model = "digits-cnn" if quick else "digits-resnet"
    fresh_home()
    text = "sparsity=0.5;criterion=l1;granularity=unstructured" if quick else DEFAULT_GRID
    summary = explore(load_model(model), text, workers=1 if quick else 2)
    print(f"\nprunelab explore {model} --workers {1 if quick else 2} (grid {text!r}): {summary['measured']} of "
          f"{summary['plans']} plans measured and recorded in {summary['seconds']:.1f} s "
          f"({summary['seconds'] / max(summary['measured'], 1):.1f} s per plan)")


def resnet50() -> object:
    """ResNet-50 from transformers' ResNetConfig (random weights), returning logits: for file.py:factory."""
    from torch import nn
    from transformers import ResNetConfig, ResNetForImageClassification

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = ResNetForImageClassification(ResNetConfig(num_labels=1000))

        def forward(self, pixels):
            return self.model(pixel_values=pixels).logits

    return Logits().eval()


def resnet50_job() -> None:
    """Jobs, one channel job's time and the bytes per worker for a ResNet-50-sized sweep."""
    from core.deploy.measure import total_macs
    from core.prune.channel import coupled_groups
    from core.search import sweep_points
    from core.search.sensitivity import scored_items

    handle = load_model("benchmarks.scale:resnet50", input_shape=(1, 3, 224, 224))
    example = handle.example_input(1)
    macs = total_macs(handle.module, example)
    items, _ = scored_items(macs, len(handle.data.x_val), "auto")
    groups = coupled_groups(handle.module, example)
    layers = sweep_points.included_layers(handle.module, example)
    settings = {"granularity": "channel", "criterion": "l1", "levels": list(DEFAULT_LEVELS), "split": "val",
                "max_items": items, "reason": ""}
    payload = sweep_points.pack(handle, settings)
    started = time.perf_counter()
    state = sweep_points.prepare(handle, settings)
    prepared = time.perf_counter() - started
    started = time.perf_counter()
    sweep_points.measure(state, (groups[len(groups) // 2]["leader"], 0.5))
    job = time.perf_counter() - started
    figures = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "params": sum(parameter.numel() for parameter in handle.module.parameters()), "macs": macs,
               "items": items, "groups": len(groups), "layers": len(layers), "levels": len(DEFAULT_LEVELS),
               "job_seconds": round(job, 1), "build_seconds": round(prepared, 1), "transfer_bytes": len(payload)}
    RESNET50_FIGURES.write_text(json.dumps(figures, indent=2) + "\n")
    print_estimate(figures)


def print_estimate(figures: dict, cores_per_node: int = 2, link_gbit: float = 1.0) -> None:
    """Jobs, per-job time, transfer size and the sweep time on N nodes, from ``--resnet50``'s figures."""
    jobs = figures["groups"] * (figures["levels"] - 1) + 1
    transfer_seconds = figures["transfer_bytes"] * 8 / (link_gbit * 1e9)
    print(f"\nResNet-50-sized model (transformers ResNetConfig, random weights, 224x224; measured "
          f"{figures['measured']} by `python -m benchmarks.scale --resnet50` on this machine, under load): "
          f"{figures['params'] / 1e6:.1f}M parameters, {figures['macs'] / 1e9:.1f} GMACs per item, "
          f"{figures['items']} val items per point (auto)")
    print(f"- jobs: channel sweep {figures['groups']} coupled groups x {figures['levels'] - 1} levels + 1 = {jobs}; "
          f"unstructured {figures['layers']} layers -> {figures['layers'] * (figures['levels'] - 1) + 1}")
    print(f"- one channel job (prune one group, score, export, ORT p50 with 1 thread): {figures['job_seconds']} s; "
          f"a worker builds its state once in {figures['build_seconds']} s")
    print(f"- sent to each worker: {figures['transfer_bytes'] / 1e6:.0f} MB (weights, architecture, data), "
          f"{transfer_seconds:.1f} s over {link_gbit:g} Gbit/s; Ray ships it once per node")
    rows = []
    for nodes in (1, 2, 4, 8, 16, 32):
        slots = nodes * cores_per_node
        waves = -(-jobs // slots)
        hours = (figures["build_seconds"] + transfer_seconds * nodes + waves * figures["job_seconds"]) / 3600
        rows.append([nodes, slots, waves, hours])
    print(f"\nEstimated channel-sweep time with {cores_per_node}-core nodes like this one (one job per core; "
          "state built once per worker; the head sends the model to each node in turn):")
    print_table(["nodes", "jobs at once", "rounds of jobs", "hours"], rows)


def main(quick: bool = False, levels=None) -> None:
    print(f"Load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; compare ratios within "
          "one run.\n")
    sweeps(levels or (QUICK_LEVELS if quick else DEFAULT_LEVELS), quick)
    grid(quick)
    if not quick and RESNET50_FIGURES.exists():
        print_estimate(json.loads(RESNET50_FIGURES.read_text()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--resnet50", action="store_true", help="only the ResNet-50-sized job (about 10 minutes)")
    parser.add_argument("--levels", help="sweep levels instead of the default 11, e.g. 0,0.5,0.9")
    options = parser.parse_args()
    chosen = [float(level) for level in options.levels.split(",")] if options.levels else None
    resnet50_job() if options.resnet50 else main(options.quick, chosen)
