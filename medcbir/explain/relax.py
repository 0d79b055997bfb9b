"""RELAX: explaining representations by masking and similarity, batched over images and masks.

Wickstrøm et al., "RELAX: Representation Learning Explainability", IJCV 2023
(arXiv:2112.10161; reference code ``relax-xai``). For N random masks M(n) and the similarity
s_n = cos(h, h̄_n) between a target embedding h and the embedding h̄_n of the masked image:

    importance   R_ij = Σ_n s_n M_ij(n) / Σ_n M_ij(n)
    uncertainty  U_ij = Σ_n M_ij(n) (s_n − R_ij)²
    U-RELAX           = R · [U ≤ median(U)]

These are exactly what relax-xai's running (weighted Welford) updates converge to — its
``sum_of_weights`` starts at 1e-10, which we keep — but computed from sufficient statistics
(Σ M, Σ s M, Σ s² M) accumulated with one matmul per forward batch in float64, so there is no
Python loop per mask. (The paper writes R = (1/N) Σ s M; the mask-weighted mean differs only by
the per-pixel factor N / Σ M ≈ 1/p and is what the reference code computes.) Its infinite-mask
limit is R*_ij = E[s M_ij] / E[M_ij].

Masks (:mod:`medcbir.explain.masks`) follow relax-xai's ``mask_generator``; one set is drawn from
the seed and shared by every image of the batch, and the masked copies of all images go through
the encoder in the same forward batches. Three things make the same map cheaper, none of which
changes R*:

- **Samplings** other than i.i.d. (antithetic pairs, scrambled Sobol cells): every mask keeps its
  distribution, so every sum over masks keeps its expectation.
- **Control variates** (``control_variates=True``). A mask is linear in its cells G for a fixed
  shift, and E[(G_k − p) M_ij] = p(1 − p) A_k(ij) is known exactly (:func:`cell_weights`). With
  per-image coefficients β,

      R̂_ij = Σ_n (s_n − β·(G_n − p)) M_ij(n) / Σ_n M_ij(n) + (1 − p) β·A(ij)

  converges to R*_ij for *any* β: the subtracted term's expectation is added back exactly. β is a
  ridge regression of s on the cells, *cross-fitted*: the masks come in two independent halves and
  each half is corrected with the β fitted on the other, so β is independent of the masks it
  corrects. What is left is the part of s that is not additive in the cells — on the encoders
  measured here most of its variance is additive, hence far fewer masks for the same map.
- **Cheaper forwards** (``backend="onnx"`` / ``"onnx-int8"``, or bf16 autocast): see
  :mod:`medcbir.explain.forward`.

Adaptive mode keeps the two half-estimates. After every forward batch (from ``min_masks`` on, or
every ``check_every`` masks if given) it takes their Pearson correlation r_half per image; the
Spearman–Brown formula ρ = 2 r_half / (1 + r_half) gives the reliability of the full estimate and
√ρ its expected correlation with the infinite-mask map. Drawing stops when min over *all* images
(query and neighbours jointly) of √ρ ≥ ``target_r`` at two consecutive checks (or at ``n_masks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medcbir.errors import ConfigError
from medcbir.explain.base import check_images, evaluating
from medcbir.explain.forward import make_forward, module_device, resolve_backend
from medcbir.explain.masks import SAMPLINGS, MaskDraw, cell_weights, draw_masks

SUM_OF_WEIGHTS_INITIAL = 1e-10  # relax-xai's initial running weight (avoids 0/0)
QUADRATIC = False  # a control variate in the squared kept fraction too: exact, but no gain measured (benchmarks/RESULTS.md "explain")
RIDGE = 0.05  # control-variate ridge, relative to a cell's variance × masks (stabilises small halves)

# What `medcbir explain` and the PACS plugin run by default: the best combination measured by
# benchmarks/explain.py (see benchmarks/RESULTS.md); relax_full's own defaults stay the plain estimator.
FAST_DEFAULTS = {
    "n_masks": 200,
    "sampling": "sobol",
    "control_variates": True,
    "backend": "auto",
    "adaptive": False,
    "target_r": 0.98,
}


def relax_options(**given) -> dict:
    """RELAX options for a face (CLI, plugin): :data:`FAST_DEFAULTS` overridden by the given non-None values."""
    return {**FAST_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}


@dataclass
class RelaxResult:
    """Everything RELAX estimates for a batch (all B×H×W float32).

    Attributes:
        n_masks_used: masks drawn (fewer than asked when the adaptive stop fired).
        expected_r: per image, the predicted correlation with the infinite-mask map at the last
            adaptive check (None outside adaptive mode).
    """

    importance: torch.Tensor
    uncertainty: torch.Tensor
    u_relax: torch.Tensor
    n_masks_used: int
    expected_r: list[float] | None = None


class _Moments:
    """Sums over one half of the masks, float64: Σ M, Σ (s−c) M, Σ (s−c)² M (c: per-image shift),
    and for control variates Σ (G−p) ⊗ M and the regression's normal equations."""

    def __init__(self, b: int, hw: int, cells: int | None):
        self.w = torch.zeros(hw, dtype=torch.float64)
        self.s1 = torch.zeros(b, hw, dtype=torch.float64)
        self.s2 = torch.zeros(b, hw, dtype=torch.float64)
        self.n = 0
        if cells is not None:
            self.q = torch.zeros(cells, hw, dtype=torch.float64)
            self.xtx = torch.zeros(cells + 1, cells + 1, dtype=torch.float64)
            self.xty = torch.zeros(b, cells + 1, dtype=torch.float64)

    def add(self, centred: torch.Tensor, masks: torch.Tensor, cells: torch.Tensor | None) -> None:
        # centred: B×m similarities minus c; masks: m×HW; cells: m×g² (G − p)
        self.w += masks.sum(0)
        self.s1 += centred @ masks
        self.s2 += (centred * centred) @ masks
        self.n += masks.shape[0]
        if cells is not None:
            self.q += cells.T @ masks
            x = torch.cat([torch.ones(cells.shape[0], 1, dtype=torch.float64), cells], 1)
            self.xtx += x.T @ x
            self.xty += centred @ x

    def beta(self, p: float) -> torch.Tensor:
        """B×g² ridge coefficients of the similarity on the cells (intercept not penalised)."""
        k = self.xtx.shape[0]
        penalty = torch.eye(k, dtype=torch.float64) * (RIDGE * max(self.n, 1) * p * (1 - p))
        penalty[0, 0] = 1e-9
        return torch.linalg.solve(self.xtx + penalty, self.xty.T).T[:, 1:]

    def plain(self, shift: torch.Tensor) -> torch.Tensor:
        return self.s1 / (self.w + SUM_OF_WEIGHTS_INITIAL) + shift[:, None]

    def corrected(self, shift: torch.Tensor, beta: torch.Tensor, added: torch.Tensor) -> torch.Tensor:
        """This half's control-variate estimate with coefficients ``beta`` (``added`` = β·(1−p)A)."""
        return (self.s1 - beta @ self.q) / (self.w + SUM_OF_WEIGHTS_INITIAL) + shift[:, None] + added


def _importance(halves, shift: torch.Tensor, cv_map: torch.Tensor | None, p: float, cross: bool) -> torch.Tensor:
    """The importance estimate from both halves: plain, or control variates (cross-fitted or in-sample)."""
    a, b = halves
    w0 = a.w + b.w + SUM_OF_WEIGHTS_INITIAL
    if cv_map is None or min(a.n, b.n) == 0:
        return (a.s1 + b.s1) / w0 + shift[:, None]
    beta_a, beta_b = a.beta(p), b.beta(p)
    if not cross:
        beta_a, beta_b = beta_b, beta_a
    # half a corrected with b's β, half b with a's: each β is independent of the masks it corrects
    num = a.s1 + b.s1 - beta_b @ a.q - beta_a @ b.q
    added = (a.w * (beta_b @ cv_map) + b.w * (beta_a @ cv_map)) / w0
    return num / w0 + shift[:, None] + added


def _uncertainty(halves, importance: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    a, b = halves
    s1, s2, w = a.s1 + b.s1, a.s2 + b.s2, a.w + b.w
    d = importance - shift[:, None]
    u = s2 - 2 * d * s1 + d * d * w + SUM_OF_WEIGHTS_INITIAL * importance**2
    return u.clamp_min(0)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def _expected_r(halves, shift, cv_map, p) -> torch.Tensor:
    """Per image: predicted correlation of the full estimate with the infinite-mask map.

    Each half's map uses its own (in-sample) β here, which makes the prediction slightly
    optimistic (benchmarks/RESULTS.md "explain"); the final map is cross-fitted.
    """
    if cv_map is not None:
        maps = [h.corrected(shift, h.beta(p), h.beta(p) @ cv_map) for h in halves]
    else:
        maps = [h.plain(shift) for h in halves]
    r_half = _pearson_rows(*maps).clamp_min(0)
    return torch.sqrt(2 * r_half / (1 + r_half))


def _resolve_draw(draw, masks, n_masks, grid, p, seed, sampling, shape):
    if draw is not None:
        return draw, None, len(draw)
    if masks is not None:
        masks = masks.reshape(-1, *shape).float()
        return None, masks, masks.shape[0]
    if n_masks < 1:
        raise ConfigError("n_masks must be at least 1")
    return MaskDraw.draw(n_masks, grid, p, seed, sampling), None, n_masks


def relax_full(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_masks: int = 3000,
    seed: int = 0,
    grid: int = 7,
    p: float = 0.5,
    batch_size: int = 120,
    precision: str | None = None,
    channels_last: bool | None = None,
    adaptive: bool = False,
    target_r: float = 0.98,
    check_every: int | None = None,
    masks: torch.Tensor | None = None,
    device=None,
    sampling: str = "iid",
    control_variates: bool = False,
    backend: str = "torch",
    draw: MaskDraw | None = None,
    min_masks: int = 100,
    fold: bool = True,
) -> RelaxResult:
    """RELAX importance, uncertainty and U-RELAX for a batch of images.

    Args:
        encoder: maps B×C×H×W in [0, 1] to embeddings.
        images: B×C×H×W float tensor.
        targets: B×D (or 1×D) target embeddings; ``None`` = each image's own embedding.
        n_masks: number of masks (the maximum in adaptive mode).
        seed: seeds the mask draw; the result is deterministic for a seed whatever the batch size.
        grid: cells per side of the Bernoulli grid (relax-xai's ``num_cells``).
        p: probability that a cell is kept (relax-xai's ``probablity_of_drop``: cells with
            uniform < p are 1).
        batch_size: masked images per encoder forward (all B images' copies share batches).
        precision: "fp32", or "bf16"/"fp16" autocast for the masked forwards (torch backend);
            ``None`` = not asked (fp32, the device's precision on the torch backend, or what
            ``backend="auto"`` picks).
        channels_last: run torch forwards in channels-last memory format; ``None`` = only with
            reduced precision (where it measured faster on CPU; fp32 measured no faster).
        adaptive: stop drawing masks once the map has converged (see the module docstring).
        target_r: adaptive mode's target expected correlation with the infinite-mask map.
        check_every: adaptive mode's check spacing in masks; ``None`` = after every forward batch
            (the batch is never shrunk to fit the checks).
        masks: explicit N×H×W masks instead of drawing them (tests; no control variates).
        device: a ``medcbir.device.Device``: the torch forwards run on ``device.torch`` (inputs
            moved there, embeddings brought back) and its precision is used unless ``precision``
            is given (the encoder must already be there).
        sampling: mask sampling, one of :data:`medcbir.explain.masks.SAMPLINGS`.
        control_variates: cross-fitted cell control variates (same limit, less noise).
        backend: ``"torch"``, ``"onnx"``, ``"onnx-int8"`` or ``"auto"``
            (:func:`medcbir.explain.forward.resolve_backend`).
        draw: an explicit :class:`~medcbir.explain.masks.MaskDraw` (tests: every mask of a tiny grid).
        min_masks: adaptive mode's first check (no check before this many masks).
        fold: bf16 on the CPU runs a copy with bf16 weights and folded batch norms, made once per
            weights (:func:`medcbir.explain.forward.bf16_copy`); ``False`` autocasts the module.

    Example:
        >>> heat = relax_full(encoder, images, n_masks=500).importance  # doctest: +SKIP
    """
    images = check_images(images)
    if not 0.0 < p < 1.0:
        raise ConfigError(f"p must be in (0, 1), got {p}")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"mask sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    torch_device = module_device(encoder)
    providers = ("CPUExecutionProvider",)
    if device is not None:
        torch_device = torch.device(device.torch)
        if precision is None and backend in ("torch", "auto") and device.precision != "fp32":
            precision = device.precision
        providers = tuple(device.ort_providers)
    if backend == "auto" and getattr(getattr(encoder, "encoder", None), "session", None) is not None:
        backend = "onnx"  # an ONNX encoder runs through its own session
    backend, precision = resolve_backend(backend, precision, torch_device.type)
    if backend != "torch" and precision != "fp32":
        raise ConfigError(f"precision {precision!r} applies to the torch backend only, not {backend!r}")
    if channels_last is None:
        channels_last = precision != "fp32"
    b, c, h, w = images.shape
    draw, masks, total = _resolve_draw(draw, masks, n_masks, grid, p, seed, sampling, (h, w))
    if control_variates and draw is None:
        raise ConfigError("control variates need the masks' cells: draw the masks (no explicit masks=)")
    cv_map = None
    if control_variates:
        p = draw.p
        cv_map = _added_back(draw.grid, p, (h, w))
    work = torch_device if backend == "torch" else torch.device("cpu")
    images = images.to(work)
    forward = make_forward(encoder, (c, h, w), backend, work, precision, channels_last, providers, fold)
    per_batch = max(1, batch_size // b)  # masks per forward batch
    spacing = per_batch if check_every is None else max(1, int(check_every))
    halves = (_Moments(b, h * w, cv_map.shape[0] if cv_map is not None else None), _Moments(b, h * w, cv_map.shape[0] if cv_map is not None else None))
    shift = None
    expected = None
    converged_checks = 0
    next_check = max(spacing, int(min_masks))
    with evaluating(encoder), forward.session():
        tgt = _targets(forward, images, targets)
        start = 0
        while start < total:
            stop = min(total, start + per_batch)
            m = draw.masks(start, stop, (h, w)) if draw is not None else masks[start:stop]
            x = (images[:, None] * m.to(work)[None, :, None]).reshape(b * (stop - start), c, h, w)
            e = forward(x)
            s = F.cosine_similarity(e.view(b, stop - start, -1), tgt[:, None, :], dim=2).double()
            if shift is None:
                shift = s.mean(1)
            centred = s - shift[:, None]
            flat = m.reshape(stop - start, h * w).double().cpu()
            cells = _regressors(draw, start, stop) if cv_map is not None else None
            part = _halves_of(draw, start, stop)
            for idx, half in enumerate(halves):
                sel = part == idx
                if sel.any():
                    half.add(centred[:, sel], flat[sel], cells[sel] if cells is not None else None)
            start = stop
            if adaptive and start >= next_check and start < total:
                while next_check <= start:
                    next_check += spacing
                expected = _expected_r(halves, shift, cv_map, p)
                converged_checks = converged_checks + 1 if expected.min().item() >= target_r else 0
                if converged_checks >= 2:
                    break
    importance = _importance(halves, shift, cv_map, p, cross=True)
    uncertainty = _uncertainty(halves, importance, shift)
    imp = importance.float().view(b, h, w)
    unc = uncertainty.float().view(b, h, w)
    med = unc.flatten(1).median(1).values
    u_relax = imp * (unc <= med[:, None, None])
    used = halves[0].n + halves[1].n
    return RelaxResult(imp, unc, u_relax, used, expected.tolist() if expected is not None else None)


def _regressors(draw: MaskDraw, start: int, stop: int) -> torch.Tensor:
    """The control variates of masks ``start:stop`` (m×(g²+1)): X = G − p, and (ΣX)² − g²p(1−p)."""
    x = draw.cells(start, stop)
    kept = x.sum(1, keepdim=True) ** 2 - x.shape[1] * draw.p * (1 - draw.p)
    return torch.cat([x, kept], 1) if QUADRATIC else x


def _added_back(grid: int, p: float, shape: tuple[int, int]) -> torch.Tensor:
    """E[X M_ij] / E[M_ij] per regressor and pixel (rows as in :func:`_regressors`), exactly.

    E[X_k M_ij] = p(1−p) A_k(ij) and E[M_ij] = p. For h = (ΣX)² − g²p(1−p): E[h G_l] = E[X_l³]
    = p(1−p)(1−2p) for every cell l and the weights sum to 1, so E[h M_ij] / E[M_ij] = (1−2p)(1−p).
    """
    linear = (1 - p) * cell_weights(grid, tuple(shape)).flatten(1)
    if not QUADRATIC:
        return linear
    return torch.cat([linear, torch.full((1, linear.shape[1]), (1 - 2 * p) * (1 - p), dtype=torch.float64)])


def _halves_of(draw: MaskDraw | None, start: int, stop: int) -> torch.Tensor:
    if draw is not None and draw.halves is not None:
        return draw.halves[start:stop]
    return torch.arange(start, stop) % 2


def _targets(forward, images: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """B×D unit target embeddings on the CPU (own embeddings come from the same backend)."""
    if targets is None:
        return F.normalize(forward(images), dim=1)
    targets = torch.as_tensor(targets, dtype=torch.float32).detach().cpu()
    if targets.ndim == 1:
        targets = targets[None]
    if targets.ndim != 2 or targets.shape[0] not in (1, images.shape[0]):
        raise ConfigError(f"targets must be B×D (B={images.shape[0]}) or 1×D, got shape {tuple(targets.shape)}")
    return F.normalize(targets.expand(images.shape[0], -1).contiguous(), dim=1)


def relax(
    encoder: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    n_masks: int = 3000,
    seed: int = 0,
    **options,
) -> torch.Tensor:
    """RELAX importance maps (B×H×W float32); options as in :func:`relax_full`."""
    return relax_full(encoder, images, targets, n_masks=n_masks, seed=seed, **options).importance


__all__ = ["FAST_DEFAULTS", "relax_options", "MaskDraw", "RelaxResult", "draw_masks", "relax", "relax_full"]
