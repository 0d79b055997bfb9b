"""``medcbir export-onnx``: an encoder checkpoint exported to ONNX and checked against torch.

The graph and its metadata are :mod:`medcbir.encoders.onnx_format` (embeddings, and with a
WILDCAT head ``class_scores`` and ``class_maps``; preprocessing, fingerprint, architecture);
:func:`medcbir.encoders.runtime.open_encoder` opens the result. Parity covers every output.
Every export is checked: the max |Δ| between torch and ONNX Runtime embeddings of the same
images must stay below the tolerance.

Example:
    >>> report = export_onnx("enc.pt", "enc.onnx")               # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4
    True
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medcbir.encoders.onnx_format import OPSET, export_graph, onnx_metadata, write_onnx
from medcbir.encoders.runtime import load_encoder_module
from medcbir.errors import ConfigError, MedcbirError
from medcbir.fsutil import atomic_path
from medcbir.imaging import walk

TOLERANCE = 1e-4


class ParityError(MedcbirError):
    """The ONNX model's embeddings differ from torch's by more than the tolerance."""


@dataclass
class ExportReport:
    """Result of an export: where, what, and how close ONNX Runtime is to torch."""

    out: str
    fingerprint: str
    preprocessing: dict
    dim: int
    max_abs_diff: float
    parity_images: int
    parity_source: str
    tolerance: float
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def parity_images(preprocessing, archive: str | Path | None = None, n: int = 8, seed: int = 0) -> tuple[np.ndarray, str]:
    """Images for the parity check: the first ``n`` archive items (test-time preprocessing) or random ones.

    Returns:
        ``(images, source)`` with ``source`` ``"archive"`` or ``"random"``.
    """
    if archive is not None:
        images = []
        for decoded in walk(archive, preprocessing=preprocessing, workers=1):
            images.append(decoded.image)
            if len(images) >= n:
                break
        if images:
            return np.stack(images).astype(np.float32), "archive"
        raise ConfigError(f"no decodable images in {archive} for the parity check")
    rng = np.random.default_rng(seed)
    shape = (n, preprocessing.channels, preprocessing.size, preprocessing.size)
    return rng.random(shape, dtype=np.float32), "random"


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    archive: str | Path | None = None,
    n_parity: int = 8,
    tolerance: float = TOLERANCE,
    opset: int = OPSET,
) -> ExportReport:
    """Export an encoder checkpoint (or ``"default"``) to ONNX and check parity.

    Args:
        checkpoint: checkpoint path or ``"default"``.
        out: destination ``.onnx`` (written atomically; not written if parity fails).
        archive: images for the parity check (else random inputs).
        n_parity: number of parity images.
        tolerance: maximum allowed |Δ| between torch and ONNX Runtime embeddings.
        opset: ONNX opset.

    Raises:
        ParityError: the exported model disagrees with torch beyond ``tolerance``.
    """
    import onnx
    import onnxruntime as ort

    module = load_encoder_module(checkpoint).eval()
    graph, outputs = export_graph(module)
    out = Path(out)
    prep = module.preprocessing
    dummy = torch.rand(2, prep.channels, prep.size, prep.size, generator=torch.Generator().manual_seed(0))
    # Exported, stamped and parity-checked at a temporary name: a model that fails the check
    # never replaces OUT.
    with atomic_path(out) as tmp:
        # The TorchScript exporter: stable for plain conv nets and needs no onnxscript rewrite;
        # its deprecation notice is not news to the user of this command.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # WILDCAT's k counts are fixed by the (fixed) input size: the constant the tracer warns about is right
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            write_onnx(graph, dummy, str(tmp), opset, outputs)
        model = onnx.load(tmp)
        for key, value in onnx_metadata(module).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = f"medcbir encoder {module.fingerprint[:12]} ({module.arch['backbone']})"
        onnx.checker.check_model(model)
        onnx.save(model, tmp)

        images, source = parity_images(prep, archive, n_parity)
        with torch.inference_mode():
            expected = graph(torch.from_numpy(images))
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images})
        diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
        if not diff <= tolerance:
            raise ParityError(f"ONNX parity check failed: max |Δ| = {diff:.2e} > {tolerance:.0e} on {len(images)} {source} images")
    return ExportReport(
        out=str(out),
        fingerprint=module.fingerprint,
        preprocessing=prep.to_dict(),
        dim=module.dim,
        max_abs_diff=diff,
        parity_images=len(images),
        parity_source=source,
        tolerance=tolerance,
        size_bytes=out.stat().st_size,
    )
