"""The feature layer of a user's model: a spatial map for Grad-CAM and WILDCAT, also from a ViT's tokens.

CAM-style methods read B×K×h×w activations. A CNN has them (its last spatial feature map); a
vision transformer has B×N×D tokens instead. :class:`TokenGrid` hooks a token layer and routes
its patch tokens through a B×D×h×w grid (an ``nn.Identity``, the feature layer the methods hook),
then back to tokens with the prefix tokens (CLS, registers) untouched: the forward computes the
same thing, and the grid carries the gradients. :func:`find_feature_layer` picks the default
layer from the model's first forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medcbir.errors import ConfigError

#: What runs without a feature layer, and what does not (named in the error).
NEEDS_FEATURE_LAYER = "gradcam, guided_gradcam, ablation_cam, clustered_cam and a WILDCAT head"
RUNS_WITHOUT = "relax, occlusion, gradient, smoothgrad, integrated_gradients and smoothgrad_ig"


def tokens_of(output):
    """The tensor of a layer's output (the first element of a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) else output


def grid_side(n_tokens: int, prefix: int) -> int:
    """The side of the square patch grid of ``n_tokens`` tokens after ``prefix`` prefix tokens, or 0."""
    patches = int(n_tokens) - int(prefix)
    side = math.isqrt(max(patches, 0))
    return side if patches > 1 and side * side == patches else 0


class TokenGrid(nn.Module):
    """Patch tokens as a B×D×h×w map between a token layer and the rest of the model.

    Args:
        prefix: tokens before the patch tokens.

    Its :meth:`hook` is registered as a forward hook on the token layer (a bound method, so a
    deep copy of the model hooks the copy's grid); :attr:`feature_map` is the feature layer.
    """

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.prefix = int(prefix)
        self.feature_map = nn.Identity()

    def hook(self, _module, _inputs, output):
        tokens = tokens_of(output)
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
            return None
        b, n, d = tokens.shape
        side = grid_side(n, self.prefix)
        if not side:
            raise ConfigError(f"the feature layer gives {n} tokens, not {self.prefix} prefix token(s) + a square grid (set prefix_tokens)")
        grid = self.feature_map(tokens[:, self.prefix :].transpose(1, 2).reshape(b, d, side, side))
        head = tokens[:, : self.prefix]
        if grid.shape[0] != b:  # a method replicated the map (ablation batches): replicate the prefix too
            head = head.repeat_interleave(grid.shape[0] // b, dim=0)
        rebuilt = torch.cat([head, grid.flatten(2).transpose(1, 2)], dim=1)
        if isinstance(output, tuple):
            return (rebuilt, *output[1:])
        return rebuilt


def _is_map(shape: tuple) -> bool:
    return len(shape) == 4 and shape[-1] * shape[-2] > 1


def _is_tokens(shape: tuple, prefix: int) -> bool:
    return len(shape) == 3 and grid_side(shape[1], prefix) > 0


def record_shapes(model: nn.Module, run) -> list[tuple[str, tuple]]:
    """(module name, output shape) of every submodule in the order their forwards finish, for one ``run()``."""
    seen: list[tuple[str, tuple]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, output, name=name):
            tensor = tokens_of(output)
            if isinstance(tensor, torch.Tensor):
                seen.append((name, tuple(tensor.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def find_feature_layer(model: nn.Module, shapes: list[tuple[str, tuple]], prefix: int) -> str | None:
    """The default feature layer's module name, from :func:`record_shapes` of one forward.

    The kind of the last spatial output decides: a CNN's last spatial feature map (its last
    stage), or for a token model the first token layer of its last block (the normalised input of
    the last attention: after the last block, the patch tokens no longer reach a CLS output).
    """
    last = [(name, shape) for name, shape in shapes if _is_map(shape) or _is_tokens(shape, prefix)]
    if not last:
        return None
    name, shape = last[-1]
    if _is_map(shape):
        return name
    token_names = [n for n, s in shapes if _is_tokens(s, prefix)]
    blocks = [f"{list_name}.{child}" for list_name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) for child, _ in module.named_children()
              if any(n == f"{list_name}.{child}" or n.startswith(f"{list_name}.{child}.") for n in token_names)]
    if not blocks:
        return name
    block = max(blocks, key=lambda b: max(i for i, n in enumerate(token_names) if n == b or n.startswith(b + ".")))
    inside = [n for n in token_names if n.startswith(block + ".")]
    return inside[0] if inside else block


def layer_shape(shapes: list[tuple[str, tuple]], name: str) -> tuple | None:
    """The output shape a named module gave in the recorded forward (None if it did not run)."""
    found = [shape for n, shape in shapes if n == name]
    return found[-1] if found else None
