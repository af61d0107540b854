"""Reconstruction after structured pruning: refit the layers that read removed channels or heads.

When channels, neurons or heads are removed, the layer that read them (the consumer: the next
Conv or Linear, an attention's output projection) sees fewer inputs. Its weights are refit by
ridge-regularised least squares so that, on calibration inputs, it reproduces what the dense
model's layer produced: ``min ||X W^T + b - Y||^2 + ridge * mean(diag(X^T X)) * ||W - W_pruned||^2``, with X
the pruned model's own inputs to the layer and Y the dense layer's outputs (its kept output
channels). Consumers are refit in one forward pass over all calibration items, each in a hook
just before it runs, so each reads inputs that already pass through the refit layers before it
and errors do not pile up. The lost mean of the removed
inputs goes into the bias (FLAP's compensation) as part of the same solve; a layer without a
bias gets none (a BatchNorm usually follows, and its statistics are re-estimated afterwards).

A consumer whose output is added to a residual stream that a normalisation layer then reads, in
a post-norm transformer (BERT: the residual is the previous norm's output; attention output and
feed-forward output projections before LayerNorm), is fit to the whole residual sum instead, as
Kwon et al. (2022) reconstruct a layer: the target is the dense model's sum minus the pruned
model's own residual, so the layer also absorbs the drift that the residual brings from the
pruned layers upstream. The norm paired with a consumer is the first one called after it, before
any other layer with weights, with the consumer's output width; the residual is the norm's input
minus the consumer's output. A consumer with too few calibration rows for its inputs
(MIN_ROWS_PER_INPUT) refits its bias alone to that target. A pre-norm stream (Llama, GPT-2) keeps
the plain target: on tinylm it fit worse (next-token loss 5.00 against 4.96, dense 4.82).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.hooks import forward_once

RIDGE = 1.0           # relative ridge: times the mean diagonal of X^T X (pulls towards the pruned weights)
SUM_RIDGE = 0.3       # the same for a fit to a residual sum; minilm, plain 50% channel plan, 240 calibration
                      # sentences: fisher cosine 0.793 at 3, 0.821 at 1, 0.827 at 0.3 (global scope 0.818,
                      # 0.840, 0.855); obs 0.877 at 3, 0.872 at 0.3
MAX_INPUTS = 8192     # a consumer with more inputs (times kernel elements) than this is not refit
MAX_ROWS = 8_192      # rows (items x positions) used per consumer; beyond, positions are subsampled
SUPPORTED = (nn.Linear, nn.Conv2d)
MIN_ROWS_PER_INPUT = 2  # fewer calibration rows than this per input overfit (minilm's FFN on 64 short sentences:
                        # 806 rows for 768 inputs)


@dataclass
class Target:
    """One consumer to refit: its name and which of the dense layer's output channels it kept."""

    name: str
    kept_outputs: torch.Tensor | None   # indices into the dense output channels; None: all kept


def refittable(layer: nn.Module) -> bool:
    """Whether ``layer`` is a type reconstruction refits (Linear, ungrouped Conv2d)."""
    return isinstance(layer, SUPPORTED) and getattr(layer, "groups", 1) == 1


def _rows(layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The layer's input as regression rows: (positions, inputs), im2col for a convolution."""
    if isinstance(layer, nn.Linear):
        return value.reshape(-1, value.shape[-1])
    patches = nn.functional.unfold(value, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])               # (items * positions, C * kh * kw)


def _outputs(layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The layer's output as rows: (positions, output channels)."""
    if isinstance(layer, nn.Linear):
        return value.reshape(-1, value.shape[-1])
    return value.movedim(1, -1).reshape(-1, value.shape[1])                   # (items * positions, out channels)


def _row_weights(value: torch.Tensor, positions: torch.Tensor | None, layer: nn.Module) -> torch.Tensor | None:
    """Which rows count: real tokens only when ``positions`` (items, tokens) matches a Linear's input."""
    if positions is None or not isinstance(layer, nn.Linear) or value.ndim != 3:
        return None
    if tuple(value.shape[:2]) != tuple(positions.shape):
        return None
    return positions.reshape(-1)


@dataclass
class Dense:
    """The dense model's output rows of each consumer and, where one is paired (see module doc), the
    rows of the residual sum its norm reads."""

    outputs: dict[str, torch.Tensor]
    sums: dict[str, torch.Tensor]


def is_norm(layer: nn.Module) -> bool:
    """Whether ``layer`` normalises a residual stream (LayerNorm, RMSNorm, a Hugging Face *RMSNorm)."""
    return isinstance(layer, (nn.LayerNorm, nn.RMSNorm)) or type(layer).__name__.endswith(("LayerNorm", "RMSNorm"))


class _Pairing:
    """Which consumer ran last: a norm reached next, with the same width and no layer with weights
    called in between (a layer scale, a convolution), reads its output plus a residual."""

    def __init__(self):
        self.last: tuple[str, torch.Tensor] | None = None
        self.normed: torch.Tensor | None = None  # the last norm's output

    def ran(self, name: str, output: torch.Tensor) -> None:
        self.last = (name, output)

    def normalized(self, norm, args, output) -> None:
        self.normed = output

    def cancel(self, *_) -> None:
        self.last = None

    def reached(self, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """(consumer name, its output) when ``value`` (a norm's input) is its residual sum; else None."""
        last, self.last = self.last, None
        if last is None or not isinstance(value, torch.Tensor) or value.shape != last[1].shape:
            return None
        if value.data_ptr() == last[1].data_ptr() or self.normed is None or self.normed.shape != value.shape:
            return None  # added in place (no residual to read), or no norm before it
        residual = value - last[1]
        # post-norm only (BERT): the residual is the previous norm's output; a pre-norm stream (Llama) is not
        return last if (residual - self.normed).norm() <= 1e-3 * self.normed.norm() else None

    def hooks(self, module: nn.Module, consumers: list[str], on_norm) -> list:
        """Watch ``module``: each Linear consumer's output, every other layer with weights, and every norm."""
        handles = []
        for child in module.modules():
            if is_norm(child):
                handles += [child.register_forward_pre_hook(on_norm), child.register_forward_hook(self.normalized)]
            elif next(child.parameters(recurse=False), None) is not None:
                handles.append(child.register_forward_pre_hook(self.cancel))
        handles += [module.get_submodule(name).register_forward_hook(
            lambda layer, args, output, name=name: self.ran(name, output))
            for name in consumers if isinstance(module.get_submodule(name), nn.Linear)]
        return handles


def token_rows(value: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """A (items, tokens, features) value as rows (real tokens only when ``positions`` matches)."""
    rows = value.reshape(-1, value.shape[-1])
    if positions is not None and value.ndim == 3 and tuple(value.shape[:2]) == tuple(positions.shape):
        return rows[positions.reshape(-1)]
    return rows


def dense_outputs(module: nn.Module, names: list[str], inputs: torch.Tensor,
                  positions: torch.Tensor | None) -> Dense:
    """The dense model's output rows of every named layer on ``inputs`` (one batch, one pass; real tokens
    only), in the order the forward pass reaches the layers (a layer called twice per pass: its first
    call), and the residual sums of those paired with a norm."""
    found, pairing = Dense({}, {}), _Pairing()
    handles = []
    for name in names:
        layer = module.get_submodule(name)

        def hook(child, args, output, name=name, layer=layer):
            if name not in found.outputs:
                weights = _row_weights(output, positions, layer)
                rows = _outputs(layer, output.detach())
                found.outputs[name] = rows if weights is None else rows[weights]
        handles.append(layer.register_forward_hook(hook))

    def norm_hook(norm, args):
        paired = pairing.reached(args[0] if args else None)
        if paired is not None and paired[0] not in found.sums:
            found.sums[paired[0]] = token_rows(args[0].detach(), positions)
    forward_once(module, inputs, handles + pairing.hooks(module, names, norm_hook))
    return found


def solve(inputs: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, bias: bool,
          ridge: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge least squares pulled towards the layer's own weights: (weight (outputs, inputs), bias or None)
    minimising ``||X W^T + b - Y||^2 + penalty * ||W - prior||^2``.

    The penalty is ``ridge`` (default RIDGE) times the mean diagonal of X^T X; a large ridge keeps
    the pruned weights as they are (and still refits the bias); the bias is not penalised.
    """
    x, y, prior = inputs.float(), targets.float(), prior.double()
    if bias:
        mean_x, mean_y = x.mean(0), y.mean(0)
        x, y = x - mean_x, y - mean_y
    gram = (x.T @ x).double()                                                   # (inputs, inputs); float32 products
    projected = (x.T @ y).double()
    mean_x, mean_y = (mean_x.double(), mean_y.double()) if bias else (None, None)
    penalty = (RIDGE if ridge is None else ridge) * gram.diagonal().mean().clamp_min(1e-12)
    gram.diagonal().add_(penalty)
    # The ridge makes the Gram matrix positive definite: Cholesky solves it in about half LU's time.
    weight = torch.cholesky_solve(projected + penalty * prior.T, torch.linalg.cholesky(gram)).T  # (outputs, inputs)
    return weight, (mean_y - weight @ mean_x) if bias else None


def refit_layer(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ridge: float | None = None) -> float:
    """Replace ``layer``'s weight (and bias) by the ridge solution; returns the relative error reduction
    on the calibration rows (1 - error after / error before). A layer the solve would not improve stays."""
    weight = layer.weight.detach()
    flat = weight.reshape(weight.shape[0], -1)                                  # (out, in * kernel elements)
    before_bias = layer.bias.detach() if layer.bias is not None else 0
    before = ((inputs @ flat.T + before_bias - targets).pow(2).sum()).item()
    new_weight, new_bias = solve(inputs, targets, flat, layer.bias is not None, ridge)
    after_bias = new_bias if new_bias is not None else 0
    after = ((inputs.double() @ new_weight.T + after_bias - targets.double()).pow(2).sum()).item()
    if after >= before:
        return 0.0
    with torch.no_grad():
        layer.weight.copy_(new_weight.reshape(weight.shape).to(weight.dtype))
        if new_bias is not None:
            layer.bias.copy_(new_bias.to(layer.bias.dtype))
    return 1.0 - after / max(before, 1e-30)


def refit_bias(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Set ``layer``'s bias to the mean of what its weights leave unexplained (its error reduction, as
    refit_layer); a layer without a bias, or one the change would not improve, stays."""
    if layer.bias is None:
        return 0.0
    flat = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    residual = targets.double() - inputs.double() @ flat.T                      # (rows, outputs)
    before = (residual - layer.bias.detach().double()).pow(2).sum().item()
    after = (residual - residual.mean(0)).pow(2).sum().item()
    if after >= before:
        return 0.0
    with torch.no_grad():
        layer.bias.copy_(residual.mean(0).to(layer.bias.dtype))
    return 1.0 - after / max(before, 1e-30)


def _fit(layer: nn.Module, rows: torch.Tensor, wanted: torch.Tensor, ridge: float | None) -> float | None:
    """Refit ``layer`` to ``wanted`` from its input ``rows``: weights and bias when the rows are enough
    for its inputs, else its bias alone; None when the rows do not match."""
    if len(rows) != len(wanted) or rows.shape[1] > MAX_INPUTS:
        return None
    rows, wanted = _subsample(rows, wanted)
    if len(rows) >= MIN_ROWS_PER_INPUT * rows.shape[1]:
        return refit_layer(layer, rows, wanted, ridge)
    return refit_bias(layer, rows, wanted)


def _leading_items(layer: nn.Module, value: torch.Tensor, rows: int) -> torch.Tensor:
    """A convolution's input cut to the first items that give MAX_ROWS rows (im2col of every item is slow)."""
    if isinstance(layer, nn.Linear):
        return value
    per_item = rows // len(value)                                               # output positions per item
    return value[:max(1, -(-MAX_ROWS // max(per_item, 1)))]


def _subsample(rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At most MAX_ROWS rows, evenly spread (convolution positions are many and alike)."""
    if len(rows) <= MAX_ROWS:
        return rows, targets
    pick = torch.linspace(0, len(rows) - 1, MAX_ROWS).long()
    return rows[pick], targets[pick]


def _pending_rows(layer: nn.Module, value: torch.Tensor, positions: torch.Tensor | None,
                  dense_rows: int) -> torch.Tensor:
    value = _leading_items(layer, value, dense_rows)
    weights = _row_weights(value, positions, layer)
    rows = _rows(layer, value)
    return rows if weights is None else rows[weights]


def refit(module: nn.Module, targets: list[Target], dense: Dense, inputs: torch.Tensor,
          positions: torch.Tensor | None, ridge: float | None = None) -> dict[str, float]:
    """Refit each target layer of the pruned ``module``, in one forward pass; {name: relative error reduction}.

    Each layer is solved in a hook just before it runs on all of ``inputs`` (one batch), so the
    layers after it already read its refit outputs; a layer paired with a norm (and keeping all
    its outputs) is solved when the norm is reached, to the residual sum, and the norm reads its
    refit output. dense: dense_outputs on the same inputs; positions: which token positions are
    real (or None). Layers that cannot be refit are skipped.
    """
    reduced: dict[str, float] = {}
    pending: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    pairing = _Pairing()

    def hook_for(target: Target):
        def hook(layer, args):
            if target.name in reduced or target.name in pending:  # a layer called twice per pass: its first call
                return
            rows = _pending_rows(layer, args[0].detach(), positions, len(dense.outputs[target.name]))
            if target.kept_outputs is None and target.name in dense.sums:
                pending[target.name] = (layer, args[0].detach(), rows)
                return
            wanted = dense.outputs[target.name][:len(rows)]
            wanted = wanted if target.kept_outputs is None else wanted[:, target.kept_outputs]
            found = _fit(layer, rows, wanted, ridge) if len(rows) >= MIN_ROWS_PER_INPUT * rows.shape[1] else None
            if found is not None:
                reduced[target.name] = found
        return hook

    def norm_hook(norm, args):
        paired = pairing.reached(args[0] if args else None)
        if paired is None or paired[0] not in pending:
            return None
        layer, value, rows = pending.pop(paired[0])
        residual = args[0] - paired[1]
        found = _fit(layer, rows, dense.sums[paired[0]] - token_rows(residual, positions),
                     SUM_RIDGE if ridge is None else ridge)
        if found is None:
            return None
        reduced[paired[0]] = found
        output = layer(value)
        pairing.cancel()
        return (residual + output, *args[1:])

    handles = [module.get_submodule(target.name).register_forward_pre_hook(hook_for(target))
               for target in targets if target.name in dense.outputs and refittable(module.get_submodule(target.name))]
    forward_once(module, inputs, handles + pairing.hooks(module, list(dense.outputs), norm_hook))
    return reduced
