"""What a reproduction writes besides its table: figures (PNG via matplotlib) and README.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, title: str, groups: dict[str, dict[str, float | None]], ylabel: str = "") -> Path:
    """One panel per metric, one bar per row: ``groups = {metric: {row: value}}``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.4), dpi=100, squeeze=False)
    for ax, (metric, values) in zip(axes[0], groups.items()):
        names = list(values)
        heights = [np.nan if values[n] is None else float(values[n]) for n in names]
        ax.bar(range(len(names)), np.nan_to_num(heights), color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def map_grid(path: Path, title: str, images, rows: dict[str, np.ndarray], masks=None) -> Path:
    """Images (first row) and each method's maps over them, the mask outlined when given."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.8 * n, 1.8 * (1 + len(rows))), dpi=100, squeeze=False)
    for j in range(n):
        axes[0][j].imshow(np.asarray(images[j])[0], cmap="gray")
        if masks is not None:
            axes[0][j].contour(np.asarray(masks[j], dtype=float), levels=[0.5], colors="lime", linewidths=0.6)
        for i, (name, maps) in enumerate(rows.items(), start=1):
            m = np.asarray(maps[j], dtype=np.float64)
            lo, hi = np.percentile(m, [1, 99])
            axes[i][j].imshow(np.asarray(images[j])[0], cmap="gray")
            axes[i][j].imshow(np.clip((m - lo) / max(hi - lo, 1e-12), 0, 1), cmap="jet", alpha=0.45)
            if j == 0:
                axes[i][j].set_ylabel(name, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def save(fig, path: Path) -> Path:
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_readme(out: Path, *, title: str, citation: str, protocol: list[str], differences: dict[str, str], table_md: str,
                 figures: list[Path], trained: list[dict], archive: dict, budget: dict, seconds: float, commands: list[str]) -> Path:
    """DIR/README.md: what was reproduced, how, what differs from the paper, and the table."""
    lines = [f"# Reproduction: {title}", "", f"Paper: {citation}", "", "## What ran", ""]
    lines += [f"{i}. {step}" for i, step in enumerate(protocol, 1)]
    lines += ["", "## What differs from the paper", ""]
    lines += [f"- **{k}**: {v}" for k, v in differences.items()]
    lines += ["", "## Training rows (within the budget)", ""]
    for t in trained:
        lines.append(f"- {t['name']}: `{t['method']}`, {t['epochs_run']} of {t['epochs']} epoch(s) in {t['seconds']:.0f} s"
                     + (" (stopped by the wall-clock budget)" if t["stopped_by_budget"] else ""))
    if not trained:
        lines.append("- none")
    lines += ["", "## Result", "", table_md, "Figures: " + ", ".join(f"`{Path(f).name}`" for f in figures), ""]
    lines += ["## The same with the CLI", "", "```bash", *commands, "```", ""]
    lines += [f"Archive: `{archive.get('path')}`" + (" (phantom v2, generated for this run)" if archive.get("generated") else ""),
              f"Budget: `{json.dumps(budget)}`", f"Wall time of the whole reproduction: {seconds:.0f} s.", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
