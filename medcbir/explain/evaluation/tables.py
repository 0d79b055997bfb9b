"""The text tables of ``medcbir explain-eval``: scores, trivial maps, margins, n/a reasons, sanity checks."""

from __future__ import annotations

import numpy as np

from medcbir.explain.evaluation.scoring import COLUMNS, HEADERS, QUALITY_KEYS


def describe_targets(result: dict) -> str:
    """One line saying which target the maps explain."""
    if result.get("targets") == "own":
        return "targets: own (each image explained w.r.t. its own embedding)"
    what = "each neighbour explained w.r.t. its query's embedding"
    if result.get("pairwise"):
        what += " and each query w.r.t. its neighbour's"
    extra = f"; exclude {result['exclude']}" if result.get("exclude") else ""
    return f"targets: query ({what}{extra}; mean similarity {result.get('target_similarity', float('nan')):.3f})"


def _cell(value, na: bool) -> str:
    if na:
        return f"{'n/a':>9}"
    if value is None or not np.isfinite(value):
        return f"{'-':>9}"
    return f"{value:>9.3f}"


def format_table(result: dict) -> str:
    """The result as fixed-width tables: methods, trivial maps, margins, n/a reasons, sanity."""
    rows = {**result["methods"], **result.get("trivial", {})}
    na = result.get("not_applicable", {})
    cols = [(k, h) for k, h, _ in COLUMNS if any(k in r for r in rows.values())]
    width = max(10, *(len(m) for m in rows))
    head = " ".join([f"{'method':<{width}}"] + [f"{h:>9}" for _, h in cols])
    lines = [f"{result.get('organ', 'mask')}: {result['n']} images, {describe_targets(result)}", head]
    for name, r in result["methods"].items():
        lines.append(" ".join([f"{name:<{width}}"] + [_cell(r.get(k), k in na) for k, _ in cols]))
    if result.get("trivial"):
        lines.append("trivial maps (ignore the encoder):")
        for name, r in result["trivial"].items():
            lines.append(" ".join([f"{name:<{width}}"] + [_cell(r.get(k), k in na) for k, _ in cols]))
        lines.append("margin over the best trivial map (positive = better than every trivial map):")
        mcols = [(k, h) for k, h in cols if k in QUALITY_KEYS]
        for name, r in result["methods"].items():
            lines.append(" ".join([f"{name:<{width}}"] + [_cell(r["margin"].get(k), k in na) for k, _ in mcols]))
    for key, reason in na.items():
        lines.append(f"n/a {HEADERS.get(key, key)}: {reason}")
    if result.get("sanity"):
        lines.append(format_sanity(result["sanity"], width))
    return "\n".join(lines)


def format_sanity(sanity: dict, width: int = 10) -> str:
    """Spearman / SSIM of each map family, real vs randomised encoder (cascade stages, data)."""
    first = next(iter(sanity.values()))
    stages = [p["layers"] for p in first["parameter"]]
    head = [f"{'method':<{width}}"] + [f"{'top ' + str(s):>12}" for s in stages] + [f"{'data':>12}", "  flag"]
    lines = ["sanity checks (Adebayo et al. 2018): Spearman / SSIM between maps of the real and the randomised encoder", " ".join(head)]
    for name, s in sanity.items():
        cells = [f"{p['spearman']:>5.2f} / {p['ssim']:>4.2f}" for p in s["parameter"]]
        cells.append(f"{s['data']['spearman']:>5.2f} / {s['data']['ssim']:>4.2f}" if s.get("data") else f"{'-':>12}")
        lines.append(" ".join([f"{name:<{width}}"] + cells + ["  FLAGGED" if s["flagged"] else "  ok"]))
    return "\n".join(lines)
