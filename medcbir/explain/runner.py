"""Search and explain in one pass: the query and its neighbours, heatmaps in shared batches.

``explain_search`` runs the engine's top-K search, decodes the neighbours' images from their
``source`` file and frame, and explains all of them with one call of the method: the query
w.r.t. its own embedding ("what makes this representation"), every neighbour w.r.t. the query's
embedding ("why does it match"), and with ``pairwise`` also the query w.r.t. each neighbour's
embedding. For RELAX that is one set of masks shared by all 1 + K (+ K) images, their masked
copies going through the encoder in the same forward batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medcbir.engine import Engine
from medcbir.engine.queries import QueryResolver
from medcbir.errors import ConfigError, DecodeError
from medcbir.explain.forward import module_device
from medcbir.imaging import read_dicom

# methods whose score has zero gradient at the image's own embedding: own targets go as None
GRADIENT_METHODS = frozenset({"gradcam", "guided_gradcam", "smoothgrad", "gradient", "guided_backprop"})
# methods that only need forward passes (run on an ONNX encoder too)
FORWARD_ONLY_METHODS = frozenset({"relax", "occlusion"})
# what a report may show about an item: identifiers of images, never of patients
DISPLAY_COLUMNS = ("sop_instance_uid", "frame", "series_instance_uid", "study_instance_uid", "modality", "body_part", "instance_number", "slice_position")


class OnnxModule(nn.Module):
    """A forward-only torch face for an ONNX Runtime ``Encoder`` (no gradients, no feature layer)."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.preprocessing = encoder.preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder.embed(x.detach().float().cpu().numpy(), batch_size=max(1, x.shape[0]))
        return torch.from_numpy(out)


def torch_encoder(encoder) -> nn.Module:
    """The ``nn.Module`` behind an engine ``Encoder`` (an ONNX one gets a forward-only wrapper)."""
    module = getattr(encoder, "module", None)
    if isinstance(module, nn.Module):
        return module
    if isinstance(encoder, nn.Module):
        return encoder
    return OnnxModule(encoder)


def method_function(method: str):
    from medcbir.explain.methods import METHODS

    try:
        return METHODS[method]
    except KeyError:
        raise ConfigError(f"unknown explanation method {method!r}; choose from {', '.join(sorted(METHODS))}") from None


def check_method_runs_on(method: str, module: nn.Module) -> None:
    if isinstance(module, OnnxModule) and method not in FORWARD_ONLY_METHODS:
        raise ConfigError(
            f"{method} needs gradients or feature maps, but the index's encoder is ONNX (relax and occlusion run on it); "
            "pass the torch checkpoint or encoder spec with the same fingerprint (--encoder)"
        )


def decode_item_image(meta: dict, preprocessing, key: bytes | None = None) -> np.ndarray:
    """The preprocessed C×S×S image of an indexed item, from its ``source`` path and ``frame``."""
    return preprocessing.apply(decode_item(meta, key))


def decode_item(meta: dict, key: bytes | None = None):
    """The decoded :class:`~medcbir.imaging.Item` of an indexed item (its ``source`` path and ``frame``)."""
    source = str(meta.get("source", ""))
    frame = int(meta.get("frame", 0) or 0)
    if not source or not Path(source).is_file():
        raise DecodeError(f"cannot read neighbour image {meta.get('sop_instance_uid', '?')}: source {source or '(none)'} is not a local file")
    try:
        items = read_dicom(source, key=key)
    except Exception as exc:  # noqa: BLE001 - one line for a damaged neighbour file
        raise DecodeError(f"cannot decode {source}: {exc}") from None
    match = [it for it in items if it.meta.frame == frame] or items[frame : frame + 1]
    if not match:
        raise DecodeError(f"{source} has no frame {frame}")
    return match[0]


def display_meta(meta: dict) -> dict:
    """The metadata a report may show (image identifiers; no patient identity or pseudonym)."""
    out = {}
    for key in DISPLAY_COLUMNS:
        value = meta.get(key)
        if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
            continue
        out[key] = value
    return out


@dataclass
class Explanation:
    """The result of :func:`explain_search`.

    Attributes:
        method: method name.
        query_label: how the query was given (path or UID).
        query_meta: the query's displayable metadata (empty for a non-indexed array).
        neighbours: the engine's neighbours, best first.
        images: (1+K)×C×S×S float32 — the query, then the neighbours.
        heatmaps: (1+K)×S×S float32 — query w.r.t. itself, neighbours w.r.t. the query.
        pairwise: K×S×S float32 (query w.r.t. each neighbour) or None.
        n_masks_used: RELAX masks actually drawn (adaptive mode), else None.
        seconds: explanation time (search excluded), ``search_seconds`` the search's.
    """

    method: str
    query_label: str
    query_meta: dict
    neighbours: list
    images: np.ndarray
    heatmaps: np.ndarray
    pairwise: np.ndarray | None = None
    n_masks_used: int | None = None
    seconds: float = 0.0
    search_seconds: float = 0.0
    options: dict = field(default_factory=dict)

    def panel(self, title: str | None = None) -> dict:
        """The report panel (see ``medcbir.explain.report.render_report``)."""
        items = [{"label": "query", "score": None, "meta": self.query_meta, "image": self.images[0, 0], "heatmap": self.heatmaps[0]}]
        for i, nb in enumerate(self.neighbours):
            items.append(
                {"label": f"#{nb.rank}", "score": nb.score, "meta": display_meta(nb.meta), "image": self.images[i + 1, 0], "heatmap": self.heatmaps[i + 1]}
            )
        extra = f", {self.n_masks_used} masks" if self.n_masks_used else ""
        panel = {
            "title": title or f"{self.method} explanation of {Path(self.query_label).name} and its top-{len(self.neighbours)}{extra}",
            "method": self.method,
            "items": items,
            "caption": "Top: the query and its neighbours (cosine similarity). Bottom: the query explained w.r.t. its own "
            "embedding, each neighbour w.r.t. the query's embedding.",
        }
        if self.pairwise is not None:
            panel["pairwise"] = [
                {"label": f"query vs #{nb.rank}", "heatmap": self.pairwise[i], "image": self.images[0, 0]} for i, nb in enumerate(self.neighbours)
            ]
        return panel

    def to_dict(self) -> dict:
        """JSON-ready summary (no pixel arrays)."""
        return {
            "method": self.method,
            "query": {"label": self.query_label, **self.query_meta},
            "neighbours": [{"id": nb.id, "rank": nb.rank, "score": nb.score, **display_meta(nb.meta)} for nb in self.neighbours],
            "heatmap_shape": list(self.heatmaps.shape),
            "n_masks_used": self.n_masks_used,
            "explain_seconds": round(self.seconds, 3),
            "search_seconds": round(self.search_seconds, 3),
            "pairwise": self.pairwise is not None,
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool))},
        }


def _query_image(engine, query) -> tuple[np.ndarray, str, dict, int]:
    """(C×S×S image, label, displayable meta, item id or -1) of a query."""
    [resolved] = QueryResolver(engine).resolve([query])
    meta: dict = {}
    if resolved.item_id >= 0:
        meta = engine.meta([resolved.item_id])[0]
    image = resolved.image
    if image is None:
        if resolved.item_id < 0:
            raise ConfigError("an embedding query has no image to explain; query with a file, a UID or an image")
        image = decode_item_image(meta, engine.encoder.preprocessing, engine.pseudonym_key)
    elif not meta and isinstance(query, (str, Path)) and Path(str(query)).is_file():
        item = read_dicom(str(query))[0]
        meta = item.meta.to_dict()
    return np.asarray(image, dtype=np.float32), resolved.label, display_meta(meta), resolved.item_id


def run_method(method: str, module: nn.Module, images: torch.Tensor, targets: torch.Tensor, own: torch.Tensor, device=None, **options):
    """Run one method on a batch; rows where ``own`` is True are explained w.r.t. their own embedding.

    RELAX and the perturbation methods take every row in one call (own rows get their own
    embedding as an explicit target, which is the same thing); gradient methods need ``None``
    for own rows (see ``SimilarityScore``), so own and other rows go in two calls.

    Args:
        device: the engine's ``medcbir.device.Device`` (None = wherever the module's weights are):
            inputs and targets are moved there, heatmaps come back on the CPU.

    Returns:
        (B×H×W CPU heatmaps, masks used or None).
    """
    from medcbir.explain.relax import relax_full

    fn = method_function(method)
    if method == "relax":
        res = relax_full(module, images, targets, device=device, **options)
        return res.importance.cpu(), res.n_masks_used
    # every other method computes where the encoder is: inputs and targets go there
    where = torch.device(device.torch) if device is not None else module_device(module)
    images, targets, own = images.to(where), targets.to(where), own.cpu()
    if method not in GRADIENT_METHODS:
        return fn(module, images, targets, **options).detach().cpu(), None
    out = torch.empty(images.shape[0], *images.shape[-2:])
    if own.any():
        out[own] = fn(module, images[own], None, **options).detach().cpu()
    if (~own).any():
        out[~own] = fn(module, images[~own], targets[~own], **options).detach().cpu()
    return out, None


def embed_batch(module: nn.Module, images: torch.Tensor, device=None) -> torch.Tensor:
    """L2-normalised embeddings (on the CPU) of a CPU batch, computed on the encoder's device."""
    where = torch.device(device.torch) if device is not None else module_device(module)
    with torch.no_grad():
        module.eval()
        return torch.nn.functional.normalize(module(images.to(where)).float(), dim=1).cpu()


def explain_search(engine, query, k: int = 5, method: str = "relax", pairwise: bool = False, exclude: str = "none", include_self: bool = False, **options) -> Explanation:
    """Search, then explain the query and its top-K neighbours in one batched pass.

    Args:
        engine: an open :class:`medcbir.engine.Engine`.
        query: a DICOM path, a SOP Instance UID in the index, or a C×S×S image.
        k: neighbours.
        method: a name of :data:`medcbir.explain.METHODS`.
        pairwise: also explain the query w.r.t. each neighbour's embedding.
        exclude: the engine's exclusion (``"none"``, ``"same-patient"``, ``"same-study"``).
        include_self: keep the query among its neighbours when it is an item of the index.
        **options: passed to the method (e.g. ``n_masks``, ``seed``, ``adaptive``).
    """
    method_function(method)
    t0 = time.perf_counter()
    [neighbours] = engine.search([query], k=k, exclude=exclude, include_self=include_self)
    search_seconds = time.perf_counter() - t0
    image, label, qmeta, own_id = _query_image(engine, query)
    module = torch_encoder(engine.encoder)
    check_method_runs_on(method, module)
    t0 = time.perf_counter()
    prep = engine.encoder.preprocessing
    key = engine.pseudonym_key
    images = np.stack([image] + [decode_item_image(nb.meta, prep, key) for nb in neighbours]).astype(np.float32)
    batch = torch.from_numpy(images)
    device = getattr(engine.encoder, "device", None) if not isinstance(module, OnnxModule) else None
    emb = embed_batch(module, batch, device)
    q = emb[:1]
    targets = q.expand(len(batch), -1).clone()
    own = torch.zeros(len(batch), dtype=torch.bool)
    own[0] = True
    if pairwise and neighbours:
        batch = torch.cat([batch, batch[:1].expand(len(neighbours), -1, -1, -1)])
        targets = torch.cat([targets, emb[1:]])
        own = torch.cat([own, torch.zeros(len(neighbours), dtype=torch.bool)])
    heat, used = run_method(method, module, batch, targets, own, device=device, **options)
    heat = heat.detach().float().cpu().numpy()
    n = 1 + len(neighbours)
    return Explanation(
        method=method,
        query_label=label,
        query_meta=qmeta,
        neighbours=neighbours,
        images=images,
        heatmaps=heat[:n],
        pairwise=heat[n:] if pairwise and neighbours else None,
        n_masks_used=used,
        seconds=time.perf_counter() - t0,
        search_seconds=search_seconds,
        options=options,
    )


def explain_to_report(
    index_dir,
    query_path,
    out_html,
    k: int = 5,
    method: str = "relax",
    n_masks: int | None = None,
    seed: int = 0,
    exclude: str = "same-patient",
    encoder=None,
    pairwise: bool = False,
    sections: list[str] | None = None,
    **options,
) -> tuple[Path, Path]:
    """Open an index, explain a query and its top-K, and write the HTML + PNG report.

    Args:
        index_dir: the index folder.
        query_path: a DICOM file (or a SOP UID in the index).
        out_html: where to write the report (the PNG goes next to it).
        k: neighbours.
        method: explanation method.
        n_masks: RELAX masks (default: ``FAST_DEFAULTS``); ignored by other methods. RELAX runs
            with :data:`medcbir.explain.relax.FAST_DEFAULTS` unless ``options`` say otherwise.
        seed: RELAX / SmoothGrad seed.
        exclude: the engine's exclusion for the search.
        encoder: an encoder with the index's fingerprint (a checkpoint for gradient methods
            when the index records an ONNX one); None = the index's.
        pairwise: add a row explaining the query w.r.t. each neighbour.
        sections: HTML sections appended to the report page (``medcbir demo``'s region match).

    Returns:
        (html path, png path).
    """
    from medcbir.explain.report import render_report

    engine = Engine.open(index_dir, encoder=encoder)
    if method == "relax":
        from medcbir.explain.relax import relax_options

        options = relax_options(n_masks=n_masks, seed=seed, **options)
    elif method in ("smoothgrad", "smoothgrad_ig"):
        options = {"seed": seed, **options}
    explanation = explain_search(engine, query_path, k=k, method=method, pairwise=pairwise, exclude=exclude, **options)
    from medcbir.explain.native import native_panel

    source = query_path if Path(str(query_path)).is_file() else None
    panel = native_panel(explanation, engine, query_source=source)
    if sections:
        panel["sections"] = list(sections)
    return render_report(out_html, panel)
