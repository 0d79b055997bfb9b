"""What is known about an explanation method on an index: its last measured status.

``medcbir explain-eval INDEX`` scores methods against organ masks beside trivial maps (and runs
the randomisation sanity checks with ``--sanity``); it keeps its last result in the index folder
(:data:`EVAL_FILE`). Every report and viewer overlay states, for the method it shows, what that
evaluation found (the margin over the best trivial map, the sanity check's verdict) or that the
method was "not evaluated" on this index, with the :data:`CAVEAT` line.

Which methods a face may offer: RELAX and occlusion need only forward passes (any encoder, ONNX
included); the gradient and CAM methods need a torch module (:data:`GRADIENT_METHODS`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

EVAL_FILE = "explain-eval.json"
REGION_EVAL_FILE = "explain-eval-regions.json"
CAVEAT = "Explanation heatmap: research use, not for diagnosis."
FORWARD_METHODS = ("relax", "occlusion")
GRADIENT_METHODS = ("gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "clustered_cam", "ablation_cam",
                    "gradient", "guided_backprop", "smoothgrad_ig")
#: the metric a status line quotes (relevance rank accuracy), else the first one measured
PREFERRED_METRIC = "rank_accuracy"
NAMES = {"relax": "RELAX", "gradcam": "Grad-CAM", "occlusion": "occlusion", "smoothgrad": "SmoothGrad",
         "integrated_gradients": "integrated gradients", "guided_gradcam": "guided Grad-CAM", "wildcat": "WILDCAT"}


def display_name(method: str) -> str:
    return NAMES.get(method, method.replace("_", " "))


def offered_methods(encoder_kind: str, has_head: bool = False) -> list[str]:
    """The methods that run with an encoder of ``encoder_kind`` (``"torch"`` or ``"onnx"``)."""
    methods = list(FORWARD_METHODS)
    if encoder_kind == "torch":
        methods += list(GRADIENT_METHODS)
        if has_head:
            methods.append("wildcat")
    return methods


def save_evaluation(index_dir: str | Path, result: dict, *, regions: bool = False) -> Path:
    """Keep ``result`` (``evaluate_methods``' answer, or with ``regions`` ``evaluate_region_explanations``')
    as the index's last explain-eval of that kind."""
    import datetime

    path = Path(index_dir) / (REGION_EVAL_FILE if regions else EVAL_FILE)
    record = {"evaluated_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **result}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def last_evaluation(index_dir: str | Path | None, *, regions: bool = False) -> dict | None:
    if index_dir is None:
        return None
    path = Path(index_dir) / (REGION_EVAL_FILE if regions else EVAL_FILE)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def method_status(index_dir: str | Path | None, method: str) -> dict:
    """``{"method", "evaluated", "margin", "metric", "best_trivial", "sanity", "text"}`` of ``method``
    on the index (``text`` is the one line shown)."""
    name = display_name(method)
    record = last_evaluation(index_dir)
    row = ((record or {}).get("methods") or {}).get(method)
    if not row:
        return {"method": method, "evaluated": False, "margin": None, "metric": None, "best_trivial": None, "sanity": None,
                "text": f"{name}: not evaluated on this index (medcbir explain-eval measures it)"}
    metric, margin, best = _headline(row)
    sanity = ((record.get("sanity") or {}).get(method)) if record else None
    verdict = None if sanity is None else ("flagged" if sanity.get("flagged") else "passed")
    parts = [f"{name}: explain-eval {record.get('evaluated_at', '')} ({record.get('organ', 'mask')}, {record.get('n', '?')} images)"]
    if margin is not None:
        parts.append(_comparison(metric, margin, best))
    parts.append("sanity check " + (verdict or "not run") + (
        " (maps barely change when the encoder is randomised)" if verdict == "flagged" else ""))
    return {"method": method, "evaluated": True, "margin": margin, "metric": metric, "best_trivial": best,
            "sanity": verdict, "text": "; ".join(parts)}


def region_method_status(index_dir: str | Path | None, method: str) -> dict:
    """``{"method", "evaluated", "region", "margin", "metric", "best_trivial", "text"}`` of a region-match
    method on the index, from its last ``explain-eval --roi-boxes``."""
    name = f"region-match {display_name(method)}"
    record = last_evaluation(index_dir, regions=True)
    row = ((record or {}).get("methods") or {}).get(method)
    if not row:
        return {"method": method, "evaluated": False, "region": True, "margin": None, "metric": None, "best_trivial": None,
                "text": f"{name}: not evaluated on this index (medcbir explain-eval --roi-boxes scores region-match maps on lesion masks)"}
    metric, margin, best = _headline(row)
    text = (f"{name}: explain-eval --roi-boxes {record.get('evaluated_at', '')} ({record.get('scored', '?')} matched lesions of "
            f"{record.get('queries', '?')} box queries)")
    if margin is not None:
        text += "; " + _comparison(metric, margin, best)
    return {"method": method, "evaluated": True, "region": True, "margin": margin, "metric": metric, "best_trivial": best, "text": text}


def _headline(row: dict) -> tuple[str | None, float | None, str | None]:
    """The metric a status line quotes for an evaluated method, its margin and the best trivial map."""
    margins = {k: v for k, v in (row.get("margin") or {}).items() if v is not None}
    metric = PREFERRED_METRIC if PREFERRED_METRIC in margins else next(iter(margins), None)
    margin = margins.get(metric) if metric else None
    best = (row.get("best_trivial") or {}).get(metric) if metric else None
    return metric, margin, best


def _comparison(metric: str, margin: float, best) -> str:
    word = "better" if margin > 0 else "no better"
    return f"{word} than the best trivial map ({best}): margin {margin:+.3f} in {metric.replace('_', ' ')}"
