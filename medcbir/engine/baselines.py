"""Baselines beside every evaluation: the same items, embedded by encoders that learned nothing.

A retrieval figure means little alone: a downsampled thumbnail of the image, or the backbone at
its random initialisation, may score as well. :func:`evaluate_baselines` re-embeds exactly the
labelled items of an index with baseline encoders, **with the index encoder's preprocessing**
(window policy, crop, size: only the descriptor differs), writes each into a temporary exact
index with the same metadata, and runs the same :func:`~medcbir.engine.evaluate.evaluate`
protocol (same labels, K, exclusions, query sample).

Baselines (:data:`BASELINES`): ``thumbnail:8``, ``thumbnail:16``, ``thumbnail:32`` (the
preprocessed image area-downsampled to N×N, flattened, L2-normalised) and ``random`` (the
default backbone and pooling at random initialisation, seed 0), and ``classic`` (thumbnail:16
beside a histogram of oriented gradients: the strongest descriptor that learned nothing, and
medcbir's ``default``; :mod:`medcbir.encoders.classic`).

Example:
    >>> rows = evaluate_baselines(engine, "archive/labels.csv", k=5)    # doctest: +SKIP
    >>> {name: round(r["map_at_k"], 3) for name, r in rows.items()}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from medcbir.device import Device
from medcbir.encoders.architecture import CLASSIC_BACKBONES, DEFAULT_BACKBONE, DEFAULT_POOLING, DEFAULT_THUMBNAIL
from medcbir.engine.engine import Engine
from medcbir.engine.evaluate import evaluate, read_labels
from medcbir.errors import ConfigError
from medcbir.imaging import ItemMeta, Preprocessing, walk
from medcbir.indexer import IndexWriter

BASELINES: tuple[str, ...] = ("thumbnail:8", "thumbnail:16", "thumbnail:32", "random", "classic")


def baseline_module(name: str, preprocessing):
    """The torch module of a baseline with the given preprocessing.

    Args:
        name: ``thumbnail:N``, ``thumbnail``, ``random``, ``random:SEED``, ``classic`` or ``hog``.
        preprocessing: the ``Preprocessing`` to use (the evaluated index's).
    """
    from medcbir.encoders.module import classic_encoder_module, new_encoder_module, thumbnail_encoder_module

    if name in CLASSIC_BACKBONES:
        return classic_encoder_module(name, preprocessing)

    base, _, arg = name.partition(":")
    try:
        value = int(arg) if arg else None
    except ValueError:
        raise ConfigError(f"bad baseline {name!r}: use thumbnail:N or random:SEED") from None
    if base == "thumbnail":
        return thumbnail_encoder_module(value or DEFAULT_THUMBNAIL, preprocessing)
    if base == "random":
        return new_encoder_module(DEFAULT_BACKBONE, preprocessing, seed=value or 0, pooling=DEFAULT_POOLING)
    raise ConfigError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)}, random:SEED)")


def _labelled_live_ids(engine, labels_csv) -> np.ndarray:
    table = read_labels(labels_csv)
    uids, frames = list(table.uids), list(table.frames)
    found = engine.lookup.find(uids, frames) if uids else np.zeros(0, np.int64)
    ids = np.unique(found[found >= 0])
    return ids[engine.live[ids]] if len(ids) else ids


def _source_paths(engine, sources: list[str]) -> list[Path]:
    """Files of the items' sources (relative sources are under the index's recorded archive)."""
    resolve = getattr(engine, "source_path", None)
    paths = []
    for source in sources:
        if str(source).startswith(("orthanc://", "dicomweb+", "http://", "https://")):
            raise ConfigError(f"baselines re-read the images, and {source.split('://')[0]} sources are not files here; evaluate from a folder index")
        path = Path(resolve(source)) if resolve is not None else Path(source)
        paths.append(path)
    return paths


def _embed_items(engine, ids: np.ndarray, preprocessing, modules: dict, workers: int, batch: int = 128) -> tuple[list, dict]:
    """(metas, {name: N×D}) of the items ``ids``, decoded from their files in one walk."""
    import torch

    metas = [ItemMeta.from_dict(m) for m in engine.meta(ids)]
    wanted = {(m.sop_instance_uid, int(m.frame)): i for i, m in enumerate(metas)}
    paths = sorted(set(_source_paths(engine, [m.source for m in metas])))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} source file(s) of the index are gone (e.g. {missing[0]}); baselines need the images")
    out = {name: np.zeros((len(metas), int(m.arch["dim"])), dtype=np.float32) for name, m in modules.items()}
    done = np.zeros(len(metas), dtype=bool)
    rows, images = [], []

    def flush():
        if not rows:
            return
        x = torch.from_numpy(np.stack(images))
        with torch.inference_mode():
            for name, module in modules.items():
                out[name][rows] = module(x).float().numpy()
        done[rows] = True
        rows.clear()
        images.clear()

    for meta, image in walk(paths, preprocessing=preprocessing, workers=workers):
        row = wanted.get((meta.sop_instance_uid, int(meta.frame)))
        if row is None or done[row]:
            continue
        rows.append(row)
        images.append(image)
        if len(rows) >= batch:
            flush()
    flush()
    if not done.all():
        raise ConfigError(f"{int((~done).sum())} labelled item(s) could not be decoded again for the baselines")
    return metas, out


def evaluate_baselines(
    engine,
    labels_csv,
    k: int = 5,
    exclude: str = "same-patient",
    queries="all",
    seed: int = 0,
    names=BASELINES,
    workers: int = 0,
) -> dict[str, dict]:
    """The :func:`evaluate` result of each baseline on the labelled items of ``engine``'s index.

    Args:
        engine: the open :class:`~medcbir.engine.Engine` being evaluated.
        labels_csv, k, exclude, queries, seed: as :func:`evaluate` (the same protocol).
        names: baseline encoder names (:data:`BASELINES`).
        workers: decoding processes (0 = auto).

    Returns:
        ``{name: result}``, each result with the same fields as :func:`evaluate` plus
        ``encoder`` (the baseline's fingerprint and preprocessing).

    Raises:
        ConfigError: the index's sources are not readable files, or nothing is labelled.
    """
    from medcbir.encoders.runtime import open_encoder

    # The index records its encoder's preprocessing: no need to load the encoder for it.
    preprocessing = Preprocessing.from_dict(engine.store.encoder_info["preprocessing"])
    ids = _labelled_live_ids(engine, labels_csv)
    if not len(ids):
        raise ConfigError(f"no labelled item of {labels_csv} is in the index")
    modules = {name: baseline_module(name, preprocessing).eval() for name in names}
    metas, vectors = _embed_items(engine, ids, preprocessing, modules, workers)
    results = {}
    device = Device.cpu()
    for name, module in modules.items():
        encoder = open_encoder(module, device=device)
        with tempfile.TemporaryDirectory(prefix="medcbir-baseline-") as tmp:
            writer = IndexWriter.open(Path(tmp) / "index", encoder, index_spec="Flat", device=device)
            try:
                writer.add_embeddings(metas, vectors[name])
                writer.close()
            except BaseException:
                writer.abort()
                raise
            with Engine.open(Path(tmp) / "index", encoder=encoder, device=device, verify="none") as baseline:
                result = evaluate(baseline, labels_csv, k=k, exclude=exclude, queries=queries, seed=seed)
        result["encoder"] = {"name": name, "fingerprint": encoder.fingerprint, "preprocessing": preprocessing.to_dict()}
        results[name] = result
    return results
