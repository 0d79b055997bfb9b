"""Retrieval monitor during training: kNN / MAP@K on a held-out, patient-disjoint split.

After each epoch the current backbone embeds, at the test-time preprocessing (the wide
window), the labelled training slices (the memory bank) and the held-out patients' slices
(the queries); each query's K nearest memory items by cosine similarity give:

- ``map_at_k``: mean over queries of the mean over k = 1..K of precision@k (the
  reference-paper MAP@K, the same definition as ``medcbir.engine.metrics.map_at_k``);
- ``knn_accuracy``: majority vote of the K labels (ties: the best-ranked label) vs the truth.

This reproduces the reference paper's Fig. 6 (retrieval quality vs epoch). The engine's
``evaluate`` is the authoritative evaluation of an index; this is a cheap in-loop check that
cannot import the engine (it sits below training in the layering).

Example:
    >>> import numpy as np
    >>> bank, queries = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
    >>> knn_retrieval(bank, np.array(["a", "b", "c"]), queries, np.array(["a", "b", "c"]), k=1)["map_at_k"]
    1.0
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def knn_retrieval(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, k: int = 5) -> dict:
    """Exact cosine kNN of queries against a memory bank, scored by label agreement.

    Args:
        bank: N×D L2-normalised embeddings; bank_labels: N labels.
        queries: Q×D L2-normalised embeddings; query_labels: Q labels.
        k: neighbours per query (clipped to N).
    """
    k = min(k, len(bank))
    scores = queries @ bank.T
    # Stable sort on -score: ties resolve to the lower bank index, deterministic across runs.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    neighbour_labels = np.asarray(bank_labels)[top]
    relevant = neighbour_labels == np.asarray(query_labels)[:, None]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    votes = []
    for row in neighbour_labels:
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts == counts.max()
        votes.append(values[best][np.argmin(first[best])])
    return {
        "k": int(k),
        "n_queries": int(len(queries)),
        "map_at_k": float(precision.mean(axis=1).mean()),
        "precision_at_k": float(relevant.mean()),
        "knn_accuracy": float(np.mean(np.asarray(votes) == np.asarray(query_labels))),
    }


class RetrievalMonitor:
    """Embeds the memory bank and queries with the current backbone and scores retrieval.

    Args:
        bank: ``(images, ranges, inverted)`` of the labelled training slices: N×1×S×S in
            modality units, N×C×2 per-item test-time window ranges, N bools.
        bank_labels: N labels.
        queries: the same triple for the held-out patients' slices.
        query_labels: Q labels.
        k: neighbours per query.
        batch_size: forward batch size.
    """

    def __init__(self, bank, bank_labels, queries, query_labels, k: int = 5, batch_size: int = 64) -> None:
        self.bank, self.bank_labels = bank, np.asarray(bank_labels)
        self.queries, self.query_labels = queries, np.asarray(query_labels)
        self.k = k
        self.batch_size = batch_size

    def _embed(self, backbone: torch.nn.Module, data, device) -> np.ndarray:
        from medcbir.train.views import window_batch

        images, ranges, inverted = data
        out = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            x = window_batch(images[start:stop].to(device.torch), ranges[start:stop], inverted[start:stop])
            with device.autocast():
                out.append(torch.nn.functional.normalize(backbone(x).float(), dim=1).cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def __call__(self, backbone: torch.nn.Module, device) -> dict:
        was_training = backbone.training
        backbone.eval()
        try:
            bank = self._embed(backbone, self.bank, device)
            queries = self._embed(backbone, self.queries, device)
        finally:
            backbone.train(was_training)
        return knn_retrieval(bank, self.bank_labels, queries, self.query_labels, self.k)


def write_jsonl(history: list[dict], path: str | Path) -> Path:
    """Rewrite the epoch log from the history (so it always matches the checkpoint)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
    tmp.replace(path)
    return path


def plot_history(history: list[dict], path: str | Path, k: int = 5) -> Path:
    """Loss and held-out MAP@K / kNN accuracy per epoch, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [row for row in history if "loss" in row]  # epoch 0 (the random start) has no loss
    fig, ax_loss = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax_loss.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", color="tab:gray", label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    if any("map_at_k" in row for row in history):
        ax_map = ax_loss.twinx()
        rows = [row for row in history if "map_at_k" in row]
        ax_map.plot([r["epoch"] for r in rows], [r["map_at_k"] for r in rows], "s-", color="tab:blue", label=f"MAP@{k}")
        ax_map.plot([r["epoch"] for r in rows], [r["knn_accuracy"] for r in rows], "^-", color="tab:green", label=f"{k}-NN accuracy")
        ax_map.set_ylim(0, 1)
        ax_map.set_ylabel("held-out retrieval")
        ax_map.legend(loc="lower right", fontsize=8)
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_title("training (held-out patients for retrieval)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
