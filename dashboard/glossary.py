"""Help text for every term the dashboard shows, in plain words (shown as the (?) next to a control)."""
from __future__ import annotations

from core import api

CRITERIA = {name: entry.help for name, entry in api.CRITERIA.items()}  # the criteria table's own help lines
# Criteria that read calibration items (gradients, activations, layer-by-layer inputs): Tune says what they need.
CALIBRATED = {name for name, entry in api.CRITERIA.items() if set(entry.needs) - {"batchnorm"}}

TERMS = {
    "accuracy": "share of the test split the model classifies correctly",
    "agreement": "share of inputs where the pruned model picks the same class as the dense one "
                 "(used when the data has no labels)",
    "p50": "p50 latency: the median time of one prediction (batch 1) in ONNX Runtime on this CPU, "
           "2 threads; half the runs were faster, half slower",
    "speedup": "how many times faster the pruned model answers than the dense one: the median of dense/pruned "
               "time over runs timed in alternation, with its 95% interval ('noise' when it cannot be told apart)",
    "macs": "MACs: multiply-accumulate operations for one input, the arithmetic the model does; "
            "fewer MACs usually means faster on a CPU",
    "params": "parameters that are not zero (pruned weights count as removed)",
    "size": "size of the exported .onnx file; unstructured zeros do not shrink it, removed channels do",
    "compressed": "the .onnx file after gzip: zeros compress well, so this shows what unstructured pruning saves "
                  "in download size",
    "sparsity": "share of the prunable weights that are zero",
    "removed": "share of the dense model's prunable weights that are zero or gone (channel pruning removes them)",
    "pts": "pts: percentage points, the plain difference of two percentages (99.2% -> 98.1% is -1.1 pts)",
    "granularity": "what is cut. unstructured: single weights; channel: whole filters together with everything "
                   "coupled to them, which is what makes ONNX Runtime faster; 2:4: 2 of every 4 weights",
    "criterion": "how weights or channels are ranked before the lowest are cut. " + "; ".join(CRITERIA.values()),
    "scope": "layer: every layer meets its own slider; global: one ranking across all layers, so sturdy layers "
             "lose more and fragile ones less, for the same overall sparsity",
    "batchnorm": "BatchNorm re-estimation: after cutting, a few forward passes over the model's own training "
                 "inputs (no labels) refresh each BatchNorm layer's mean and variance; often most of the lost "
                 "accuracy comes back, without any training",
    "coupled": "(+N coupled): this layer's output channels feed N other layers (through a residual add, a "
               "concatenation or a depthwise convolution), so removing a channel removes it from all of them; "
               "one slider moves the whole group",
    "round_to": "ONNX Runtime's convolution kernels work in blocks of channels (8 with AVX2, 16 with AVX-512): "
                "odd counts can run slower than the dense model. 'auto' takes the multiple this CPU's kernels want; "
                "small layers round to smaller multiples so they still lose channels",
    "by_profile": "on: profile the dense model once and price every candidate plan by each layer's measured ms per "
                  "MAC (no candidate is timed, so load does not move the result; time outside layers is assumed to "
                  "stay). Off: every candidate plan is timed whole",
    "ms_per_mac": "the pruned layer's time per MAC over the dense layer's: 1.00x means its time fell with its "
                  "MACs; well above 1, the cut bought less time than it removed work (blocked kernels lost, "
                  "memory-bound)",
    "prune_width": "channel plans on transformers keep the residual stream (the width every attention layer "
                   "reads and adds back to) whole and prune heads and feed-forward channels; on, the stream "
                   "itself is narrowed in every block at once: smaller and faster, usually at a larger accuracy cost",
    "reconstruct": "after channels, neurons or heads are cut, the layers that read them are refit by least "
                   "squares so they reproduce the dense model's outputs on the calibration items (64 of the "
                   "model's own inputs, no labels; about two forward passes over them). Usually the largest "
                   "one-shot gain: digits-resnet at 50% keeps far more accuracy with it",
    "quantize": "static INT8 in ONNX Runtime after pruning: a 4x smaller file and, on CNNs, lower latency "
                "(the deltas stay against the dense FP32 model)",
    "blocks": "removable blocks: residual blocks and transformer layers whose input a skip connection adds to "
              "their output; removing one leaves the skip path (the identity), so the whole block's work goes",
    "influence": "block influence: 1 - cosine between what enters a block and what leaves it, on calibration "
                 "data; a block that barely changes its input costs little to remove. A depth share ranks blocks "
                 "by it under every criterion but fisher",
    "block_fisher": "block Fisher score (criterion fisher): how much the model's own predictions notice a gate "
                    "on the block's residual branch (the block's output minus its input) turned down, on 64 "
                    "calibration items, no labels needed; a depth share under fisher removes the lowest first",
    "sensitivity": "how much accuracy drops when only this layer is pruned to its target, from the sensitivity "
                   "sweep (green: under 0.5 pts, orange: under 2 pts, red: more)",
}
