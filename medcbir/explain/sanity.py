"""Sanity checks for saliency maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

A map that explains the *encoder* must change when the encoder does. Two randomisations:

- **model-parameter randomisation, cascading from the top**: the encoder's learnt layers (modules
  owning a ≥ 2-D weight, i.e. convolutions and linear layers, in registration order — forward
  order for a sequential backbone) are re-initialised from the last one down: the top layer, the
  top quarter, the top half, all;
- **data randomisation**: the encoder re-initialised and trained briefly (self-supervised,
  NT-Xent between two noisy views) on pixel-shuffled images, which have the archive's
  intensities but no anatomy — the self-supervised counterpart of the paper's shuffled labels.

For each, the method's maps on the real and the randomised encoder are compared image by image
with the Spearman rank correlation (raw and of |map|) and the SSIM of the min–max scaled maps
(kornia, 11-pixel Gaussian window). A method whose maps keep a rank correlation ≥ ``flag_above``
after full randomisation (or data randomisation) is flagged: its maps show the image, not what
the encoder learnt. Everything is seeded: the same seed gives the same numbers.

Example:
    >>> from medcbir.explain import gradcam
    >>> out = sanity_checks(gradcam, encoder, images, seed=0)  # doctest: +SKIP
    >>> out["parameter"][-1]["spearman"], out["flagged"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.base import check_images

FLAG_ABOVE = 0.5  # rank correlation above which a map "barely changed"


def parametrised_layers(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules owning a weight matrix/kernel (≥ 2-D parameter: conv, linear), in registration order.

    Normalisation layers (1-D affine parameters) are left out: their initial state is the
    identity, so "re-initialising" one changes nothing in an untrained encoder and little in a
    trained one; the paper randomises the weights of the learnt layers.
    """
    return [(name, m) for name, m in encoder.named_modules() if any(p.ndim >= 2 for p in m.parameters(recurse=False))]


def cascade_stages(n_layers: int) -> list[int]:
    """How many top layers each cascade stage randomises: 1, ¼, ½, all (deduplicated)."""
    if n_layers < 1:
        raise ConfigError("the encoder has no parameters to randomise")
    return sorted({1, math.ceil(n_layers / 4), math.ceil(n_layers / 2), n_layers})


def _reinitialise(module: nn.Module, seed: int) -> None:
    # reset_parameters draws from the global RNG: fork it so the caller's stream is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            # conv/linear resets draw fresh weights (kaiming-uniform), like the paper's re-initialisation
            module.reset_parameters()
            return
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0.0, float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0)


def randomised_copy(encoder: nn.Module, n_top: int, seed: int = 0) -> nn.Module:
    """A copy of ``encoder`` with its top ``n_top`` parametrised layers re-initialised (seeded)."""
    clone = copy.deepcopy(encoder).eval()
    layers = parametrised_layers(clone)
    if not layers:
        raise ConfigError("the encoder has no parameters to randomise")
    for i, (_, module) in enumerate(layers[::-1][:n_top]):
        _reinitialise(module, seed * 1000 + i)
    return clone


def _nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, labels)


def noise_trained_copy(encoder: nn.Module, images: torch.Tensor, steps: int = 30, seed: int = 0, batch: int = 16, lr: float = 1e-3) -> tuple[nn.Module, float]:
    """A re-initialised copy of ``encoder`` trained ``steps`` steps on pixel-shuffled ``images``.

    Each step draws ``batch`` images, permutes each one's pixels independently (the intensities
    stay, the anatomy goes) and pulls two noisy views of each together with NT-Xent.

    Returns:
        (the trained copy in eval mode, its last loss).
    """
    images = check_images(images).detach()
    if not parametrised_layers(encoder):
        raise ConfigError("the encoder has no parameters to randomise")
    # everything re-initialised, normalisation layers (and their running statistics) included
    clone = copy.deepcopy(encoder)
    owners = [m for m in clone.modules() if any(True for _ in m.parameters(recurse=False))]
    for i, module in enumerate(owners):
        _reinitialise(module, (seed + 7919) * 1000 + i)
    for p in clone.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(clone.parameters(), lr=lr)
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)
    loss = torch.tensor(float("nan"))
    clone.train()
    for _ in range(steps):
        pick = torch.randint(0, n, (batch,), generator=gen)
        perm = torch.argsort(torch.rand(batch, h * w, generator=gen), dim=1)
        shuffled = torch.gather(flat[pick], 2, perm[:, None].expand(-1, c, -1)).reshape(batch, c, h, w)
        v1 = shuffled + 0.1 * torch.randn(shuffled.shape, generator=gen)
        v2 = shuffled + 0.1 * torch.randn(shuffled.shape, generator=gen)
        loss = _nt_xent(clone(v1).float(), clone(v2).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone, float(loss.detach())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    # a constant map has no ranks: equal to another constant map (1), unrelated to anything else (0)
    ca, cb = np.ptp(a) == 0, np.ptp(b) == 0
    if ca or cb:
        return 1.0 if ca and cb else 0.0
    return float(spearmanr(a, b).statistic)


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.flatten(1).amin(1)[:, None, None]
    hi = maps.flatten(1).amax(1)[:, None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def map_agreement(real: torch.Tensor, other: torch.Tensor) -> dict:
    """Mean over images of Spearman (raw, |·|) and SSIM between two B×H×W map batches."""
    from kornia.metrics import ssim

    real, other = real.detach().float().cpu(), other.detach().float().cpu()
    a, b = real.flatten(1).numpy(), other.flatten(1).numpy()
    rho = [_spearman(a[i], b[i]) for i in range(len(a))]
    rho_abs = [_spearman(np.abs(a[i]), np.abs(b[i])) for i in range(len(a))]
    window = min(11, real.shape[-1] - (1 - real.shape[-1] % 2), real.shape[-2] - (1 - real.shape[-2] % 2))
    s = ssim(_scaled(real)[:, None], _scaled(other)[:, None], window_size=max(3, window), max_val=1.0)
    return {
        "spearman": float(np.mean(rho)),
        "spearman_abs": float(np.mean(rho_abs)),
        "ssim": float(s.flatten(1).mean(1).mean()),
    }


def _maps(method: Callable, model: nn.Module, images: torch.Tensor, target_images: torch.Tensor | None, options: dict) -> torch.Tensor:
    targets = None
    if target_images is not None:
        with torch.no_grad():
            targets = F.normalize(model(target_images).float(), dim=1)
    return method(model, images, targets, **options).detach().float()


@dataclass
class Randomised:
    """The randomised encoders of one sanity run (shared by every method scored against them)."""

    stages: list[tuple[int, str, nn.Module]]  # (layers re-initialised, lowest such layer, encoder)
    data: nn.Module | None  # the noise-trained encoder, or None
    data_steps: int
    data_loss: float


def randomise(encoder: nn.Module, images: torch.Tensor, seed: int = 0, stages: list[int] | None = None, data_steps: int = 30) -> Randomised:
    """Cascading re-initialised copies and the noise-trained copy of ``encoder`` (seeded).

    Args:
        encoder: the real encoder (left untouched).
        images: B×C×H×W images whose pixels the data-randomised encoder is trained on, shuffled.
        seed: seeds the re-initialisations and the training.
        stages: numbers of top layers to re-initialise (default :func:`cascade_stages`).
        data_steps: training steps of the noise-trained copy (0 = none).
    """
    layers = parametrised_layers(encoder)
    stages = stages or cascade_stages(len(layers))
    copies = [(int(k), layers[len(layers) - k][0], randomised_copy(encoder, k, seed)) for k in stages]
    data, loss = (None, float("nan"))
    if data_steps > 0:
        data, loss = noise_trained_copy(encoder, images, steps=data_steps, seed=seed)
    return Randomised(copies, data, int(data_steps), loss)


def sanity_checks(
    method: Callable,
    encoder: nn.Module,
    images: torch.Tensor,
    target_images: torch.Tensor | None = None,
    seed: int = 0,
    stages: list[int] | None = None,
    data_steps: int = 30,
    flag_above: float = FLAG_ABOVE,
    options: dict | None = None,
    randomised: Randomised | None = None,
    **more_options,
) -> dict:
    """Model-parameter (cascading) and data randomisation checks of one method.

    Args:
        method: ``method(encoder, images, targets, **options) -> B×H×W`` (a
            :data:`medcbir.explain.METHODS` entry or a trivial map).
        encoder: the real encoder (left untouched; copies are randomised).
        images: B×C×H×W images to explain.
        target_images: B×C×H×W images whose embeddings (by each encoder) are the targets
            ("why does image i match target image i"); ``None`` = own embeddings.
        seed: seeds the re-initialisations and the noise training.
        stages: numbers of top layers to randomise (default :func:`cascade_stages`).
        data_steps: training steps of the data-randomised encoder (0 = skip that check).
        flag_above: rank correlation at or above which the maps "barely changed".
        options: passed to ``method`` (a dict, so a method's own ``seed`` cannot clash).
        randomised: encoders from :func:`randomise` to reuse across methods (then ``seed``,
            ``stages`` and ``data_steps`` are theirs).
        **more_options: passed to ``method`` too.

    Returns:
        ``{"parameter": [{"layers", "from_layer", "spearman", "spearman_abs", "ssim"}, ...],
        "data": {... , "steps", "loss"} | None, "flagged": bool, "reasons": [str]}``.
    """
    images = check_images(images)
    options = {**(options or {}), **more_options}
    randomised = randomised or randomise(encoder, images, seed, stages, data_steps)
    real = _maps(method, encoder, images, target_images, options)
    parameter = []
    for n_top, from_layer, model in randomised.stages:
        agree = map_agreement(real, _maps(method, model, images, target_images, options))
        parameter.append({"layers": n_top, "from_layer": from_layer, **agree})
    data = None
    if randomised.data is not None:
        agree = map_agreement(real, _maps(method, randomised.data, images, target_images, options))
        data = {**agree, "steps": randomised.data_steps, "loss": randomised.data_loss}
    reasons = []
    if parameter and parameter[-1]["spearman"] >= flag_above:
        reasons.append(f"rank correlation {parameter[-1]['spearman']:.2f} with {parameter[-1]['layers']} randomised layers")
    if data is not None and data["spearman"] >= flag_above:
        reasons.append(f"rank correlation {data['spearman']:.2f} with the noise-trained encoder")
    return {"parameter": parameter, "data": data, "flagged": bool(reasons), "reasons": reasons, "flag_above": flag_above}


__all__ = [
    "FLAG_ABOVE",
    "Randomised",
    "randomise",
    "cascade_stages",
    "map_agreement",
    "noise_trained_copy",
    "parametrised_layers",
    "randomised_copy",
    "sanity_checks",
]
