"""all-MiniLM-L6-v2 (the minilm demo) with 25% and 50% of its attention heads removed: embedding
cosine to the dense model and nearest-neighbour agreement over the demo's sentences, measured on
the exported models in ONNX Runtime, for magnitude criteria against a random-head control.
Only heads are pruned (feed-forward layers and the hidden size stay).

    python -m benchmarks.minilm_heads [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import print_table
from core.deploy.export import export_onnx
from core.deploy.fidelity import embedding_fidelity
from core.deploy.measure import create_session, run_batched, total_macs
from core.inspect import attention_heads
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model


def embeddings(module, example, items: np.ndarray) -> np.ndarray:
    session, _ = create_session(export_onnx(module, example), threads=2)
    return run_batched(session, items, batch_size=64)


def main(quick: bool = False) -> list[list]:
    handle = load_model("minilm")
    splits = [split for split in (handle.data.x_train, handle.data.x_test) if split is not None]
    items = np.concatenate(splits)[:16 if quick else None]
    example = handle.example_input(1)
    leaders = [name for name in attention_heads(handle.module, example) if name.endswith(("query", "q_proj"))]
    dense = embeddings(handle.module, example, items)
    dense_macs = total_macs(handle.module, example)
    rows = []
    for share in (0.5,) if quick else (0.25, 0.5):
        for criterion, seeds in (("l2", [0]), ("random", [0])) if quick else (("l2", [0]), ("l1", [0]),
                                                                             ("random", [0, 1, 2])):
            figures = []
            for seed in seeds:
                started = time.perf_counter()
                plan = Plan(granularity="channel", criterion=criterion, sparsity=0.0, seed=seed,
                            layers=dict.fromkeys(leaders, share))
                result = apply_plan(handle, plan)
                fidelity = embedding_fidelity(embeddings(result.module, example, items), dense)
                figures.append((fidelity["cosine"], fidelity["cosine_p5"], fidelity["neighbour_agreement"],
                                total_macs(result.module, example), time.perf_counter() - started))
            cosine, p5, agreement, macs, seconds = np.mean(figures, axis=0)
            heads = sum(row["kept"] for row in result.kept.values() if row["unit"] == "head") // 3
            rows.append([f"{share:.0%}", criterion + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""),
                         heads, round(float(cosine), 3), round(float(p5), 3), f"{agreement:.1%}",
                         f"{dense_macs / macs:.2f}x", round(float(seconds), 1)])
    print_table(["heads removed", "criterion", "heads kept (of 72)", "cosine mean", "cosine p5",
                 "nearest-neighbour agreement", "MAC ratio", "s per plan"], rows)
    print(f"\n{len(items)} sentences of the demo's data; ONNX Runtime CPU, 2 threads")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 sentences, 50%% of heads, l2 and one random seed")
    main(parser.parse_args().quick)
