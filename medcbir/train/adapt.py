"""Adapting a starting encoder to an archive, keeping only what the archive shows is better.

``medcbir train ARCHIVE`` (no ``--method``) runs this: the starting encoder (``--init``, by default
``default``, the classic descriptor) stays frozen; stages are fitted on top of it, cheapest first,
and each is judged by the label-free score :func:`medcbir.encoders.agreement.agreement` on patients
it was not fitted on:

1. **start**: the starting encoder itself (always a candidate: a stage that does not beat it is dropped);
2. **whiten**: archive statistics: centring, and PCA-whitening with shrinkage at several
   dimensions (:mod:`medcbir.train.whitening`) — the dimension is chosen by the score;
3. **head**: a linear head learned from positives found without labels (augmented views and
   series-verified cross-patient pairs, :mod:`medcbir.train.positives`), fitted in closed form
   (learned whitening);
4. **finetune** (on request, network starts only): the self-supervised recipe
   (:mod:`medcbir.train.trainer`) started from the start's weights, a few epochs.

Protocol. The archive's patients are split into ``folds`` patient-disjoint parts; for each part,
every candidate is fitted on the *other* parts and scored on this part's slices as queries (their
neighbours searched among all slices of other patients, as in the index). Each slice of the archive
is thus scored once, by a fit that never saw its patient. A candidate is kept only if its per-query
gain over the start has a one-sided lower confidence bound above zero (bootstrap over series,
:func:`~medcbir.encoders.agreement.compare`), at a level shared among the candidates (Bonferroni:
with ``confidence`` 0.95 and seven candidates, each is tested at 99.3 %), so that the chance of
keeping any stage that does not help stays at most 5 %; among those shown better, the largest
gain wins; otherwise the start is kept. The kept stage is then refitted on the whole archive (the statistics the index will hold)
and saved as an encoder checkpoint: a :class:`~medcbir.encoders.projection.ProjectedBackbone` over
the frozen start, fingerprinted like any encoder (or the start itself when it is kept).

With labels (``labels``), the labelled MAP@K of each candidate on the same held-out queries is
reported beside the score; it never takes part in the decision.

Example:
    >>> summary = adapt(AdaptConfig(archive="archive/", out="adapted.pt"))   # doctest: +SKIP
    >>> summary.kept, summary.reason                                          # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcbir.device import Device
from medcbir.encoders.agreement import K, agreement, compare, neighbours_other_patients
from medcbir.encoders.architecture import BACKBONES
from medcbir.encoders.checkpoint import save_checkpoint
from medcbir.encoders.module import EncoderModule
from medcbir.encoders.projection import ProjectedBackbone, projected_arch
from medcbir.encoders.runtime import load_encoder_module
from medcbir.errors import ArchiveNotFound, ConfigError
from medcbir.imaging.labels import read_labels
from medcbir.imaging.walk import list_files, walk
from medcbir.train.positives import series_verified_pairs
from medcbir.train.recipe import RECIPE
from medcbir.train.whitening import LinearMap, fit_centring, fit_learned_whitening, fit_pca_whitening, principal

#: the stages, cheapest first (``start`` is always a candidate); ``finetune`` only on request
STAGES = ("whiten", "head", "finetune")
DEFAULT_STAGES = ("whiten", "head")
FINETUNE_EPOCHS = 3
WHITEN_DIMS = (32, 64, 128, 256)
HEAD_DIMS = (64, 128)
SHRINKAGE = 1.0
#: a head is fitted only with at least this many positive pairs
MIN_PAIRS = 20
START = "start"


@dataclass
class AdaptConfig:
    """Options of one adaptation (``medcbir train`` without ``--method``).

    Args:
        archive: DICOM folder.
        out: the kept encoder's checkpoint.
        init: the starting encoder (a built-in name, a checkpoint; anything
            :func:`~medcbir.encoders.runtime.load_encoder_module` takes).
        stages: which of :data:`STAGES` to try.
        folds: patient-disjoint parts (each held out once).
        seed: the parts and the augmentations.
        labels: ``labels.csv`` for the labelled monitor (reported, never used to decide).
        k: neighbours per query (K of agreement@K and MAP@K).
        augment_images: how many images (at most) get an augmented view for the head's positives.
        confidence: one-sided confidence that a stage beats the start.
        workers: decoding processes (0 = automatic).
        batch_size: images per forward.
        device: a :class:`~medcbir.device.Device` (None = automatic).
        progress: progress bar while embedding.
        finetune_epochs: epochs of the ``finetune`` stage (per fold, and once more on the whole archive).
    """

    archive: str | Path
    out: str | Path
    init: object = "default"
    stages: tuple = DEFAULT_STAGES
    folds: int = 2
    seed: int = 0
    labels: str | Path | None = None
    k: int = K
    augment_images: int = 1000
    confidence: float = 0.95
    workers: int = 0
    batch_size: int = 64
    device: object = None
    progress: bool = False
    finetune_epochs: int = FINETUNE_EPOCHS


@dataclass
class ArchiveFeatures:
    """The starting encoder's embeddings of an archive, with what the score needs per row."""

    vectors: np.ndarray
    patient: np.ndarray
    study: np.ndarray
    series: np.ndarray
    position: np.ndarray
    keys: list
    sources: list
    augmented_rows: np.ndarray
    augmented: np.ndarray
    skipped: dict = field(default_factory=dict)
    _components: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.vectors)

    def components(self, rows: np.ndarray):
        """:func:`~medcbir.train.whitening.principal` of the rows' embeddings (computed once per set of rows)."""
        key = np.asarray(rows, dtype=np.int64).tobytes()
        if key not in self._components:
            self._components[key] = principal(self.vectors[rows])
        return self._components[key]


@dataclass
class StageResult:
    """One candidate's held-out scores."""

    name: str
    kind: str
    dim: int
    agreement: float | None
    gain: float | None = None
    lower_bound: float | None = None
    better: bool | None = None
    labelled_map: float | None = None
    note: str = ""
    seconds: float = 0.0


@dataclass
class AdaptSummary:
    """What an adaptation did (``medcbir train`` prints it; ``--json`` is :meth:`to_dict`)."""

    out: str
    init: str
    kept: str
    reason: str
    stages: list[StageResult]
    images: int
    patients: int
    folds: int
    k: int
    coverage: float
    seconds: float
    fingerprint: str
    dim: int
    preprocessing: dict
    skipped: dict

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_line(self) -> str:
        return f"kept {self.kept}: {self.reason}"


# --------------------------------------------------------------------------- embedding
def _embed(module: EncoderModule, images: torch.Tensor, device) -> np.ndarray:
    with torch.inference_mode(), device.autocast():
        return torch.nn.functional.normalize(module(images.to(device.torch)).float(), dim=1).cpu().numpy()


def embed_archive_features(module: EncoderModule, config: AdaptConfig, device) -> ArchiveFeatures:
    """Decode the archive with the encoder's preprocessing; embed each image (and a sample of augmented views)."""
    from medcbir.train.views import ArchiveAugment

    archive = Path(config.archive)
    if not archive.exists():
        raise ArchiveNotFound(f"archive not found: {archive}")
    n_files = sum(1 for _ in list_files(archive))
    share = min(1.0, config.augment_images / max(1, n_files)) if "head" in config.stages else 0.0
    augment = ArchiveAugment(module.preprocessing.size, strength=0.5) if share > 0 else None
    rng = np.random.default_rng(config.seed)
    metas, chunks, aug_rows, aug_chunks, batch = [], [], [], [], []
    items = walk(archive, preprocessing=module.preprocessing, workers=config.workers, key=os.urandom(32))
    bar = _progress(config.progress, n_files)

    def flush():
        if not batch:
            return
        x = torch.from_numpy(np.stack(batch))
        chunks.append(_embed(module, x, device))
        picked = np.flatnonzero(rng.random(len(batch)) < share)
        if len(picked):
            aug_chunks.append(_embed(module, augment(x[picked]), device))
            aug_rows.extend((len(metas) - len(batch) + picked).tolist())
        batch.clear()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            for meta, image in items:
                metas.append(meta)
                batch.append(image)
                if bar is not None:
                    bar.update(1)
                if len(batch) == config.batch_size:
                    flush()
            flush()
        finally:
            items.close()
            if bar is not None:
                bar.close()
    if not metas:
        raise ArchiveNotFound(f"no usable images in {archive}")
    dim = module.dim
    return ArchiveFeatures(
        vectors=np.concatenate(chunks),
        patient=np.array([m.patient_pseudonym or m.study_instance_uid for m in metas], dtype=object),
        study=np.array([m.study_instance_uid for m in metas], dtype=object),
        series=np.array([m.series_instance_uid for m in metas], dtype=object),
        position=np.array([m.slice_position for m in metas], dtype=np.float64),
        keys=[(m.sop_instance_uid, int(m.frame)) for m in metas],
        sources=[m.source for m in metas],
        augmented_rows=np.asarray(aug_rows, dtype=np.int64),
        augmented=np.concatenate(aug_chunks) if aug_chunks else np.zeros((0, dim), np.float32),
        skipped=dict(items.report.skipped),
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="embedding archive", unit="image", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- candidates
def patient_folds(patient: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per row, its part (0…folds−1): patients in a seeded order dealt round-robin (patient-disjoint)."""
    names, first = np.unique(np.asarray(patient, dtype=object).astype(str), return_index=True)
    names = names[np.argsort(first)]
    order = np.random.default_rng(seed).permutation(len(names))
    part = {names[i]: rank % folds for rank, i in enumerate(order)}
    return np.array([part[p] for p in np.asarray(patient, dtype=object).astype(str)], dtype=np.int64)


def candidates(stages, dim_in: int, max_dim: int, finetune: Callable | None = None) -> list[tuple[str, str, int, Callable]]:
    """(name, kind, dim, fit) of every candidate of the stages; ``fit(features, rows)`` → a LinearMap
    (or a :class:`FineTuned` encoder, for ``finetune``, the fit passed in).

    Dimensions are capped by ``max_dim`` (what the smallest fit sample spans), each tried once.
    """
    out = []
    if "whiten" in stages:
        out.append(("centre", "centre", dim_in, lambda f, rows: fit_centring(f.vectors[rows])))
        for d in sorted({min(d, max_dim) for d in WHITEN_DIMS if d < dim_in}):
            out.append((f"whiten-{d}", "whiten", d, lambda f, rows, d=d: fit_pca_whitening(f.vectors[rows], d, SHRINKAGE, f.components(rows))))
    if "head" in stages:
        for d in sorted({min(d, max_dim) for d in HEAD_DIMS if d < dim_in}):
            out.append((f"head-{d}", "head", d, lambda f, rows, d=d: fit_head(f, rows, d)))
    if "finetune" in stages and finetune is not None:  # the dearest last
        out.append(("finetune", "finetune", dim_in, finetune))
    return out


def fit_head(features: ArchiveFeatures, rows: np.ndarray, dim: int) -> LinearMap:
    """Learned whitening from the positives among ``rows`` (augmented views, series-verified pairs)."""
    pairs = series_verified_pairs(features.vectors, features.study, features.series, features.position, rows)
    diffs = [features.vectors[pairs[:, 0]] - features.vectors[pairs[:, 1]]]
    inside = np.isin(features.augmented_rows, rows)
    diffs.append(features.vectors[features.augmented_rows[inside]] - features.augmented[inside])
    diffs = np.concatenate(diffs)
    if len(pairs) < MIN_PAIRS:
        raise ConfigError(f"{len(pairs)} series-verified pairs (needs {MIN_PAIRS}: at least two exams with positioned series)")
    fitted = fit_learned_whitening(features.vectors[rows], diffs, dim, SHRINKAGE, components=features.components(rows))
    return LinearMap(fitted.weight, fitted.bias, fitted.kind, {**fitted.params, "series_pairs": int(len(pairs)), "augmented_pairs": int(inside.sum())})


class FineTuned:
    """A network fine-tuned on some patients, with its embeddings of every row of the archive."""

    def __init__(self, module: EncoderModule, vectors: np.ndarray) -> None:
        self.module, self.vectors = module, vectors

    @property
    def dim(self) -> int:
        return self.module.dim

    def apply(self, _start_vectors: np.ndarray) -> np.ndarray:
        return self.vectors


def is_network(module: EncoderModule) -> bool:
    """A start whose weights the trainer can fine-tune (a plain ResNet, not a descriptor or an adapted encoder)."""
    return module.arch.get("backbone") in BACKBONES


def fine_tuner(start: EncoderModule, config: AdaptConfig, device) -> Callable[[ArchiveFeatures, np.ndarray], FineTuned]:
    """``fit(features, rows)``: the recipe trained from the start's weights on the rows' patients' files."""
    import tempfile

    from medcbir.train.trainer import TrainConfig, train

    prep = start.preprocessing

    def fit(features: ArchiveFeatures, rows: np.ndarray) -> FineTuned:
        files = sorted({str(features.sources[r]) for r in rows.tolist()})
        with tempfile.TemporaryDirectory(prefix="medcbir-finetune-") as tmp:
            part = Path(tmp) / "archive"
            part.mkdir()
            for i, path in enumerate(files):  # the fitting patients' files only: held-out patients stay unseen
                (part / f"{i:07d}.dcm").symlink_to(Path(path).resolve())
            out = Path(tmp) / "finetuned.pt"
            train(TrainConfig(
                archive=part, out=out, **RECIPE, epochs=int(config.finetune_epochs), batch_size=int(min(64, max(2, len(rows) // 2))),
                size=prep.size, windows=tuple(prep.windows), crop=prep.crop, fov_mm=prep.spacing * prep.size if prep.spacing else None,
                pooling=start.arch.get("pooling", "avg"), backbone=start.arch["backbone"], init=start, seed=config.seed,
                device=device, progress=False, workers=config.workers,
            ))
            module = load_encoder_module(out).eval()
        return FineTuned(module, embed_rows(module, config, device, features.keys))

    return fit


def embed_rows(module: EncoderModule, config: AdaptConfig, device, keys: list) -> np.ndarray:
    """The archive embedded by ``module``, row for row with ``keys``."""
    row_of = {key: i for i, key in enumerate(keys)}
    out = np.zeros((len(keys), module.dim), dtype=np.float32)
    batch, rows = [], []
    module = module.to(device.torch)
    for meta, image in walk(Path(config.archive), preprocessing=module.preprocessing, workers=config.workers):
        row = row_of.get((meta.sop_instance_uid, int(meta.frame)))
        if row is None:
            continue
        batch.append(image)
        rows.append(row)
        if len(batch) == config.batch_size:
            out[rows] = _embed(module, torch.from_numpy(np.stack(batch)), device)
            batch, rows = [], []
    if batch:
        out[rows] = _embed(module, torch.from_numpy(np.stack(batch)), device)
    return out


def labelled_map(vectors: np.ndarray, patient: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Per labelled query, MAP@K among the labelled rows of other patients (the evaluate protocol)."""
    labelled = np.flatnonzero(labels != "")
    queries = queries[labels[queries] != ""]
    if not len(queries):
        return np.zeros(0)
    where = {row: i for i, row in enumerate(labelled.tolist())}
    local = np.array([where[q] for q in queries.tolist()], dtype=np.int64)
    top = neighbours_other_patients(vectors[labelled], patient[labelled], k, local)
    found = np.where(top >= 0, labels[labelled][np.maximum(top, 0)], None)
    relevant = (found == labels[queries][:, None]) & (top >= 0)
    return (np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)).mean(axis=1)


# --------------------------------------------------------------------------- the run
def adapt(config: AdaptConfig) -> AdaptSummary:
    """Adapt the starting encoder to the archive; keep the best stage the label-free score vouches for."""
    t_start = time.perf_counter()
    _check(config)
    device = config.device or Device.auto()
    start = load_encoder_module(config.init).eval().to(device.torch)
    features = embed_archive_features(start, config, device)
    n_patients = len(np.unique(features.patient.astype(str)))
    labels = _labels(config.labels, features.keys)
    stages: list[StageResult] = []
    if n_patients < 2:
        reason = f"the archive has {n_patients} patient(s); judging a stage needs neighbours from at least two"
        return _finish(config, start, None, START, reason, [StageResult(START, START, start.dim, None)], features, n_patients, 0.0, t_start)

    part = patient_folds(features.patient, min(config.folds, n_patients), config.seed)
    folds = [(np.flatnonzero(part != f), np.flatnonzero(part == f)) for f in range(int(part.max()) + 1)]
    queries = np.concatenate([held for _, held in folds])
    base = _score(features, lambda rows: None, folds, labels, config.k)
    start_row = StageResult(START, START, start.dim, base["agreement"], labelled_map=base["map"], seconds=base["seconds"])
    stages.append(start_row)
    max_dim = max(1, min(len(rows) for rows, _ in folds) - 1)
    tune = fine_tuner(start, config, device) if "finetune" in config.stages and is_network(start) else None
    tried = candidates(config.stages, start.dim, max_dim, tune)
    if "finetune" in config.stages and not is_network(start):
        stages.append(StageResult("finetune", "finetune", start.dim, None, note=f"{start.arch.get('backbone')} is not a network the trainer can fine-tune"))
    # Each candidate is one more chance to keep a stage by luck: the level is shared among them
    # (Bonferroni), so the chance of keeping any stage that does not help stays 1 − confidence.
    each = 1.0 - (1.0 - config.confidence) / max(1, len(tried))
    for name, kind, dim, fit in tried:
        try:
            scored = _score(features, lambda rows, fit=fit: fit(features, rows), folds, labels, config.k)
        except ConfigError as exc:
            stages.append(StageResult(name, kind, dim, None, note=str(exc)))
            continue
        both = np.isfinite(scored["per_query"])  # paired: the queries the candidate could be scored on
        verdict = compare(scored["per_query"][both], base["per_query"][both], features.series[queries][both].astype(str),
                          confidence=each, seed=config.seed)
        stages.append(StageResult(name, kind, scored["dim"], scored["agreement"], verdict.gain, verdict.lower, verdict.better,
                                  scored["map"], note=scored["note"], seconds=scored["seconds"]))

    kept, reason = _decide(stages, config.confidence, config.k)
    chosen = None
    if kept != START:
        fit = next(f for n, _, _, f in tried if n == kept)
        chosen = fit(features, np.arange(len(features)))
    return _finish(config, start, chosen, kept, reason, stages, features, n_patients, base["coverage"], t_start)


def _check(config: AdaptConfig) -> None:
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if int(config.folds) < 2:
        raise ConfigError(f"--folds must be ≥ 2 (each part is held out once), not {config.folds}")
    if int(config.k) < 1:
        raise ConfigError(f"k must be ≥ 1, not {config.k}")
    if not 0.5 <= float(config.confidence) < 1:
        raise ConfigError(f"--confidence must be in [0.5, 1), not {config.confidence}")


def _labels(path, keys) -> np.ndarray | None:
    if not path:
        return None
    table = read_labels(path).by_item()
    labels = np.array([table.get(key, "") for key in keys], dtype=object)
    if not (labels != "").any():
        raise ConfigError(f"{path} labels no image of the archive")
    return labels


def _score(features: ArchiveFeatures, fit: Callable, folds, labels, k: int) -> dict:
    """A candidate's per-query agreement (and labelled MAP) over the folds, each part scored by a fit without it.

    A fold whose fit fails (too few positives in its other parts) leaves its queries NaN; a candidate
    that no fold could fit raises the fold's :class:`ConfigError`.
    """
    t0 = time.perf_counter()
    per_query, maps, judged, dim, failures = [], [], 0.0, features.vectors.shape[1], []
    for fit_rows, held in folds:
        try:
            mapping = fit(fit_rows)
        except ConfigError as exc:
            failures.append(str(exc))
            per_query.append(np.full(len(held), np.nan))
            maps.append(np.full(int((labels[held] != "").sum()) if labels is not None else 0, np.nan))
            continue
        vectors = features.vectors if mapping is None else mapping.apply(features.vectors)
        dim = vectors.shape[1]
        found = agreement(vectors, features.patient, features.series, features.position, k=k, queries=held)
        per_query.append(found.per_query)
        judged += found.coverage * len(held)
        if labels is not None:
            maps.append(labelled_map(vectors, features.patient.astype(str), labels, held, k))
    if len(failures) == len(folds):
        raise ConfigError(failures[0])
    per_query = np.concatenate(per_query)
    scored = np.isfinite(per_query)
    maps = np.concatenate(maps) if maps else np.zeros(0)
    return {
        "per_query": per_query,
        "agreement": float(per_query[scored].mean()),
        "coverage": float(judged / max(1, scored.sum())),
        "map": float(np.nanmean(maps)) if np.isfinite(maps).any() else None,
        "dim": int(dim),
        "note": f"scored on {int(scored.sum())} of {len(per_query)} queries ({failures[0]} elsewhere)" if failures else "",
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _decide(stages: list[StageResult], confidence: float, k: int) -> tuple[str, str]:
    start = stages[0]
    level = f"lower bound at {confidence:.0%} over {len(stages) - 1} candidates"
    shown = [s for s in stages[1:] if s.better]
    tried = [s for s in stages[1:] if s.agreement is not None]
    if shown:
        best = max(shown, key=lambda s: s.gain)  # paired gains: fair also for a stage scored on part of the queries
        return best.name, (
            f"agreement@{k} {start.agreement + best.gain:.3f} vs {start.agreement:.3f} for the start on held-out patients "
            f"(gain {best.gain:+.3f}, {level} {best.lower_bound:+.3f})"
        )
    if not tried:
        return START, "no stage could be fitted (" + "; ".join(f"{s.name}: {s.note}" for s in stages[1:]) + ")" if stages[1:] else "no stage to try"
    best = max(tried, key=lambda s: s.gain)
    return START, (
        f"no stage beat it beyond chance on held-out patients (best {best.name}: gain {best.gain:+.3f} in agreement@{k} "
        f"over the start's {start.agreement:.3f}, {level} {best.lower_bound:+.3f})"
    )


def projected_module(start: EncoderModule, mapping: LinearMap) -> EncoderModule:
    """The start encoder (a frozen copy) followed by ``mapping``, as an encoder module."""
    base = copy.deepcopy(start.backbone).cpu()
    for p in base.parameters():
        p.requires_grad_(False)
    net = ProjectedBackbone(base, start.dim, mapping.dim).set_map(mapping.weight, mapping.bias)
    return EncoderModule(net, projected_arch(start.arch, mapping.dim), start.preprocessing).eval()


def _finish(config, start, chosen, kept, reason, stages, features, n_patients, coverage, t_start) -> AdaptSummary:
    if chosen is None:
        module = start.cpu()
    elif isinstance(chosen, FineTuned):
        module = chosen.module.cpu()
    else:
        module = projected_module(start.cpu(), chosen)
    summary = AdaptSummary(
        out=str(config.out),
        init=str(config.init) if not isinstance(config.init, torch.nn.Module) else "<module>",
        kept=kept,
        reason=reason,
        stages=stages,
        images=len(features),
        patients=n_patients,
        folds=int(config.folds),
        k=int(config.k),
        coverage=round(float(coverage), 4),
        seconds=0.0,
        fingerprint=module.refresh_fingerprint(),
        dim=module.dim,
        preprocessing=module.preprocessing.to_dict(),
        skipped=features.skipped,
    )
    summary.seconds = round(time.perf_counter() - t_start, 2)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, module, method="adapt", extra={"adaptation": _plain(summary.to_dict())})
    return summary


def _plain(value):
    """Only plain values in a checkpoint (it loads with ``weights_only=True``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value
