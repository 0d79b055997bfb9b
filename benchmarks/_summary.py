"""The summary table at the top of RESULTS.md: one line per section, computed from its JSON.

Each line says the section's goal, our figure, the peer's (or the floor's), whether the goal was
met (and by how much it was missed), and when and under what load it was measured. The figures
are read from ``results/<name>.json`` by the function registered for the section, so a re-run
updates its line; a section without a function (or whose JSON no longer has the fields) gets a
line saying so instead of a stale figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class Line:
    goal: str
    ours: str
    peer: str
    result: str


SUMMARIES = {}


def summary(name: str):
    def register(fn):
        SUMMARIES[name] = fn
        return fn

    return register


def verdict(met: bool, missed: str = "") -> str:
    return "**met**" if met else f"**missed**{' (' + missed + ')' if missed else ''}"


def short_of(value: float, goal: float) -> str:
    """How far ``value`` is below ``goal``, in percent of the goal."""
    return f"{100 * (1 - value / goal):.0f} % short"


@summary("byo_encoder")
def _byo_encoder(r: dict) -> Line:
    rows = r["rows"]
    worst = min(rows, key=lambda x: x["ratio"])
    ours = ", ".join(f"{x['model']} {x['medcbir_images_per_s']:.2f} images/s ({x['ratio']:.2f}×)" for x in rows)
    peer = ", ".join(f"{x['model']} {x['plain_images_per_s']:.2f}" for x in rows)
    return Line(f"own Hugging Face encoder through medcbir ≥ {r['goal_ratio']}× a plain torch loop ({r['size']} px)", ours,
                f"plain torch loop: {peer} images/s", verdict(worst["ratio"] >= r["goal_ratio"], f"{worst['model']}: {short_of(worst['ratio'], r['goal_ratio'])}"))


@summary("adaptation")
def _adaptation(r: dict) -> Line:
    per: dict = {}
    for row in r["results"]:
        per.setdefault(row["archive"], []).append(row["rows"]["kept"]["map_at_k"] - row["rows"]["start (default)"]["map_at_k"])
    worst = min(min(g) for g in per.values())
    mean = sum(sum(g) / len(g) for g in per.values()) / len(per)
    rho = min(row["spearman"] for row in r["results"])
    ok = worst >= -0.005 and mean >= 0.03 and rho >= 0.8
    missed = "; ".join(m for m in (
        f"worst {worst:+.3f} < −0.005" if worst < -0.005 else "",
        f"mean gain {0.03 - mean:.3f} short" if mean < 0.03 else "",
        f"min ρ {0.8 - rho:.3f} short" if rho < 0.8 else "") if m)
    return Line("`medcbir train` (adaptation from default): kept ≥ start − 0.005 MAP@5 always, ≥ +0.03 on average; label-free score ρ ≥ 0.8",
                f"mean gain {mean:+.3f}, worst {worst:+.3f}; min Spearman ρ {rho:.2f}", "start: default (classic)", verdict(ok, missed))


@summary("decode")
def _decode(r: dict) -> Line:
    two, one = r["modes"]["raw"]["2"], r["modes"]["raw"]["1"]
    s = two["speedup_vs_1_process"]
    return Line("2 decode workers ≥ 1.6× one process (raw)", f"{two['items_per_s']:.0f} items/s ({s:.2f}×)",
                f"one process {one['items_per_s']:.0f} items/s", verdict(s >= 1.6, short_of(s, 1.6)))


@summary("explain")
def _explain(r: dict) -> Line:
    row = next(x for x in r["rows"] if "(default)" in x["name"])
    ok = row["ratio_to_peer"] <= 0.4 and row["r_vs_ref_min"] >= 0.95
    return Line("query + 5 neighbours, 128 px: min r ≥ 0.95 in ≤ 0.4× relax-xai's time for one image",
                f"{row['ratio_to_peer']:.3f}× at min r {row['r_vs_ref_min']:.3f}", f"relax-xai, 3000 masks: {r['peer_seconds_3000']:.0f} s",
                verdict(ok))


@summary("explain_224")
def _explain_224(r: dict) -> Line:
    d = r["size_224"]
    row = next(x for x in d["rows"] if x["name"].startswith("**defaults**"))
    ok = row["wall_seconds"] <= 10 and row["r_vs_ref_min"] >= 0.95
    return Line("query + 5 neighbours, 224 px, default encoder: ≤ 10 s at min r ≥ 0.95",
                f"{row['wall_seconds']:.1f} s at min r {row['r_vs_ref_min']:.3f}", f"relax-xai, 1 image: {d['peer']['seconds']:.1f} s",
                verdict(ok))


@summary("explain_quality")
def _explain_quality(r: dict) -> Line:
    best = {}
    for encoder, run in r["runs"].items():
        for method, scores in run["query"]["methods"].items():
            m = scores["margin"]["rank_accuracy"]
            if m is not None and (not best or m > best["margin"]):
                best = {"margin": m, "encoder": encoder, "method": method}
    return Line("none (a measurement): do explanation maps beat trivial maps on the liver?",
                f"best RRA margin {best['margin']:+.3f} ({best['method']}, {best['encoder']})", "best trivial map (margin 0)",
                "no map beats the best trivial map" if best["margin"] <= 0 else "a map beats every trivial map")


@summary("fuzz")
def _fuzz(r: dict) -> Line:
    ok = r["crashes"] == 0 and r["hangs"] == 0 and r["every_file_accounted"]
    return Line(f"0 crashes, 0 hangs on {r['files']:,} mutated DICOM files", f"{r['crashes']} crashes, {r['hangs']} hangs",
                "–", verdict(ok))


@summary("index")
def _index(r: dict) -> Line:
    ratio = r["ratio"]
    return Line(f"`index_archive` ≥ {r['goal_ratio']}× the encoder alone", f"{r['index_archive_items_per_s']:.1f} items/s",
                f"encoder alone (floor) {r['encoder_alone_items_per_s']:.1f} items/s",
                f"{ratio:.2f}×: " + verdict(ratio >= r["goal_ratio"], short_of(ratio, r["goal_ratio"])))


@summary("index_growth")
def _index_growth(r: dict) -> Line:
    approx = [x for x in r["rows"] if x["retrained_spec"] != "Flat"]
    low = min(x["retrained_recall"] for x in approx)
    frozen = min(x["frozen_recall"] for x in approx if x["frozen_spec"] != "Flat")
    return Line(f"recall@10 ≥ {r['target']} at every step of growth to {r['n_max']:,} items", f"lowest {low:.3f} (retrained)",
                f"exact search (1.000); never retrained: lowest {frozen:.3f}", verdict(low >= r["target"], f"by {r['target'] - low:.3f}"))


@summary("index_open")
def _index_open(r: dict) -> Line:
    modes = {m["verify"]: m for m in r["modes"]}
    ours, peer = modes["checksums"]["open_s_best"], modes["sha256"]["open_s_best"]
    return Line(f"open a {r['items']:,}-item index ≤ {r['goal_s']:g} s (default check)", f"{ours:.2f} s (XXH3 checksums)",
                f"sha256 check {peer:.2f} s", verdict(ours <= r["goal_s"], f"{ours - r['goal_s']:.2f} s over"))


@summary("orthanc_load")
def _orthanc_load(r: dict) -> Line:
    ok = r["lost"] == 0 and r["search_failures"] == 0
    return Line("under C-STORE load: nothing lost, every search answered",
                f"{r['lost']} lost, {r['search_failures']} failed searches; p95 {1000 * r['search_p95_s']:.0f} ms; "
                f"{r['plugin_items_per_s']:.1f} items/s",
                f"`index_archive` from disk {r['peer_items_per_s']:.1f} items/s", verdict(ok))


@summary("phantom")
def _phantom(r: dict) -> Line:
    return Line(f"≥ {r['goal']:.0f} slices/s at {r['args']['size']} px on 2 cores", f"{r['ours']:.0f} slices/s",
                f"one process {r['peer']:.0f} slices/s", verdict(r["ours"] >= r["goal"], short_of(r["ours"], r["goal"])))


@summary("lesion_kinds")
def _lesion_kinds(r: dict) -> Line:
    a = r["accuracy_mean"]
    return Line("phantom v3 lesion kinds: not separable by density or size alone (no goal; a check of the data)",
                f"1-NN kind accuracy: box thumbnail {a['thumb_box']:.3f}, mean HU {a['mean_hu']:.3f}", f"size alone {a['size']:.3f}",
                "ran")


@summary("roi")
def _roi(r: dict) -> Line:
    g, runs = r["goals"], r["runs"]
    region = sum(x["region"]["map_at_k"] for x in runs) / len(runs)
    whole = {e: sum(x["whole_slice"][e]["map_at_k"] for x in runs) / len(runs) for e in ("default", "trained")}
    crops = {n: sum(x["crop_baselines"][n]["map_at_k"] for x in runs) / len(runs) for n in runs[0]["crop_baselines"]}
    ours = f"region MAP@5 {region:.3f} (gain {g['whole_default']['mean']:+.3f} / {g['whole_trained']['mean']:+.3f} over whole slice, " \
           f"{g['best_crop']['mean']:+.3f} over the best crop)"
    missed = [f"gain over whole slice short by {g['whole_default']['goal'] - min(g['whole_default']['per_seed'] + g['whole_trained']['per_seed']):.3f}"
              ] if not (g["whole_default"]["met"] and g["whole_trained"]["met"]) else []
    if not g["best_crop"]["met"]:
        missed.append(f"over crops short by {g['best_crop']['goal'] - min(g['best_crop']['per_seed']):.3f}")
    if "bytes" in g:
        ours += f"; regions {g['bytes']['ratio']:.2f}× slice bytes, p50 {g['latency']['ratio']:.2f}× a slice query at {r['scale']['items']:,}"
        if not g["bytes"]["met"]:
            missed.append(f"bytes {g['bytes']['ratio']:.2f}× > {g['bytes']['goal']:g}×")
        if not g["latency"]["met"]:
            missed.append(f"p50 {g['latency']['ratio']:.2f}× > {g['latency']['goal']:g}×")
    peer = f"whole slice {whole['default']:.3f} (default) / {whole['trained']:.3f} (trained); crops " + \
           ", ".join(f"{n} {v:.3f}" for n, v in crops.items())
    return Line("region MAP@5 ≥ whole slice + 0.25 and ≥ best crop + 0.10 (every seed); region bytes ≤ 4×, p50 ≤ 2× slice at 100k",
                ours, peer, verdict(not missed, "; ".join(missed)))


@summary("roi_open")
def _roi_open(r: dict) -> Line:
    stored, computed = r["stored_second_open"], r["computed_open"]
    return Line(f"the stored region search structure opens ≥ 10× faster than computing it at the first region query "
                f"({stored['regions']:,} regions)",
                f"open {stored['open_s']} s (recomputed: {stored['recomputed']['moments']} moments, {stored['recomputed']['trained']} trainings)",
                f"computed at open {computed['open_s']} s", verdict(r["met"], f"{r['ratio']}×"))


@summary("roi_index")
def _roi_index(r: dict) -> Line:
    big = max(r["sizes"], key=lambda s: s["size"])
    ms = big["stages"]["ms_per_slice"]
    return Line(f"what regions cost at indexing ({big['size']} px; no goal), and refreshing them in place vs re-indexing",
                f"{big['index']['regions']['items_per_s']} items/s with regions ({big['index_ratio']}× the peer; extraction "
                f"{ms['total']} ms/slice: image {ms['image']}, proposals {ms['proposals']}, organs {ms['organs']}, "
                f"descriptors {ms['descriptors']}); refresh {big['refresh']['items_per_s']} items/s",
                f"--no-regions {big['index']['no_regions']['items_per_s']} items/s; re-index with regions "
                f"{big['index']['regions']['items_per_s']} items/s (refresh {big['refresh_ratio']}×)", "ran")


@summary("roi_real_mr")
def _roi_real_mr(r: dict) -> Line:
    s = r["summary"]
    goal_whole, goal_crop = 0.25, 0.10
    missed = []
    if min(s["gain_whole"]) < goal_whole:
        missed.append(f"gain over whole slice short by {goal_whole - min(s['gain_whole']):.3f}")
    if min(s["gain_crop"]) < goal_crop:
        missed.append(f"over crops short by {goal_crop - min(s['gain_crop']):.3f}")
    crops = ", ".join(f"{n} {v:.3f}" for n, v in s["baselines"].items())
    return Line("real MR, synthetic lesions of 4 kinds: region MAP@5 ≥ whole slice + 0.25 and ≥ best crop + 0.10 (every seed; issue 24's goals)",
                f"region MAP@5 {s['region']:.3f} (without splitting large structures {s['without_split']:.3f})",
                f"whole slice {s['whole_slice']:.3f}; crops {crops}", verdict(not missed, "; ".join(missed)))


@summary("roi_explain")
def _roi_explain(r: dict) -> Line:
    s = r["summary"]
    relax, occlusion = s["by_method"]["relax"], s["by_method"]["occlusion"]
    return Line("region-match explanation (explain --roi, RELAX) beats the best trivial map on lesion masks: RRA margin > 0 on every seed",
                f"RRA relax {relax['rra']:.3f} (margin {s['rra_margin_mean']:+.3f}), occlusion {occlusion['rra']:.3f}; "
                f"{s['end_to_end_seconds_per_neighbour']:.2f} s per explained neighbour",
                f"best trivial map ({', '.join(s['best_trivial_names'])}) {s['best_trivial_rra']:.3f}",
                verdict(s["met"], f"by {-s['rra_margin_worst']:.3f} RRA on the worst seed"))


@summary("rest_fuzz")
def _rest_fuzz(r: dict) -> Line:
    ok = r["orthanc_restarts"] == 0 and r["items_lost"] == 0 and r["bodies"] >= 20000
    return Line("≥ 20,000 hostile bodies: 0 Orthanc restarts, 0 items lost, worker memory bounded",
                f"{r['bodies']} bodies: {r['orthanc_restarts']} restarts, {r['items_lost']} lost, "
                f"worker peak {r['worker_rss_peak_mb']:.0f} MB (from {r['worker_rss_before_mb']:.0f})",
                f"search p50 {r['search_quiet_before_p50_ms']:.0f} ms before, {r['search_quiet_after_p50_ms']:.0f} ms after", verdict(ok))


@summary("source_check")
def _source_check(r: dict) -> Line:
    per_k = 1000 * r["ours_s"] / r["files"]
    return Line("noticing changed/removed sources costs little per run (no goal; size/mtime chosen over a content hash)",
                f"size/mtime check of {r['files']} files: {r['ours_s']:.2f} s ({per_k:.0f} ms per 1,000)",
                f"XXH3 of the content {r['xxh3_s']:.2f} s, sha256 {r['sha256_s']:.2f} s", "ran")


@summary("plugin_explain")
def _plugin_explain(r: dict) -> Line:
    return Line(f"search p95 while explaining ≤ {r['goal_ratio']:g}× quiet", f"p95 {r['busy_p95_ms']:.0f} ms ({r['ratio']:.2f}×)",
                f"quiet server p95 {r['quiet_p95_ms']:.0f} ms", verdict(r["ratio"] <= r["goal_ratio"]))


@summary("prior_exam")
def _prior_exam(r: dict) -> Line:
    res = r["results"]
    name = "trained" if "trained" in res else "default"
    ours, peer = res[name]["series"]["within_1"], res["thumbnail:16"]["series"]["within_1"]
    return Line("prior exam: slice within one of the right level for ≥ 90 % of queries", f"{name}: {100 * ours:.1f} %",
                f"thumbnail:16 {100 * peer:.1f} %", verdict(ours >= 0.9, f"{100 * (0.9 - ours):.1f} points short"))


def _quality(r: dict) -> Line:
    recipe = [t["result"]["labels.csv"]["map_at_k"] for t in r["trained"] if t["row"].startswith("recipe:")]
    best_name, best = max(((n, b["labels.csv"]["map_at_k"]) for n, b in r["baselines"].items()), key=lambda x: x[1])
    mean = sum(recipe) / len(recipe)
    ok = mean - best >= 0.10 and min(recipe) > best
    return Line("recipe MAP@5 (levels) ≥ best baseline + 0.10", f"recipe {mean:.3f} (mean of {len(recipe)} seeds)",
                f"{best_name} {best:.3f}", verdict(ok, f"margin {mean - best:+.3f}, needed +0.10"))


summary("quality")(_quality)
summary("quality_epochs")(_quality)


@summary("ray_index")
def _ray_index(r: dict) -> Line:
    ratio = r["ray1_over_single"]
    return Line("Ray, 1 embedding actor ≥ 0.85× single-process", f"{r['best']['ray-1']:.1f} items/s ({ratio:.2f}×)",
                f"single-process {r['best']['single']:.1f} items/s", verdict(ratio >= 0.85, short_of(ratio, 0.85)))


def _real_mr(r: dict) -> Line:
    t = r["trained"][0]
    ours = t["result"]["map_at_k"]
    best_name, best = max(t["result"]["baselines"].items(), key=lambda kv: kv[1]["map_at_k"])
    return Line("real MR across subjects: trained recipe MAP@5 above every baseline", f"{t['row']} {ours:.3f}",
                f"best baseline {best_name} {best['map_at_k']:.3f}", verdict(ours > best["map_at_k"], f"by {best['map_at_k'] - ours:.3f}"))


summary("real_mr")(_real_mr)
summary("real_mr_defaults")(_real_mr)


@summary("robustness")
def _robustness(r: dict) -> Line:
    rows = [x for x in r["rows"] if x["encoder"].startswith("trained")]
    worst = max(x["drop"] for x in rows)
    peer = [x for x in r["rows"] if x["encoder"] == "thumbnail:16" and x["crop"] == "crop" and x["variant"] == "CT"]
    return Line("trained recipe's MAP@5 drops ≤ 0.05 under nuisances", f"worst drop {worst:+.3f}",
                f"thumbnail:16 (CT) drop {peer[0]['drop']:+.3f}" if peer else "–", verdict(worst <= 0.05, f"by {worst - 0.05:.3f}"))


@summary("search")
def _search(r: dict) -> Line:
    misses = []
    for s in r["sizes"]:
        size = f"{s['items']:,}: "
        if s["overhead_ratio"] > 1.10:
            misses.append(size + f"overhead {s['overhead_ratio']:.2f} > 1.10")
        if s["recall_at_10_vs_exact"] < 0.98 or s["speedup_vs_exact"] < 25:
            misses.append(size + f"recall {s['recall_at_10_vs_exact']:.3f} at {s['speedup_vs_exact']:.1f}× exact QPS")
        if s["items"] >= 1_000_000 and s["p50_ms_engine"] > 1:
            misses.append(size + f"p50 {s['p50_ms_engine']:.2f} ms > 1 ms")
        if s["open_s_verify_checksums"] > 2:
            misses.append(size + f"open {s['open_s_verify_checksums']:.2f} s > 2 s, met since: section index_open")
    s = max(r["sizes"], key=lambda x: x["items"])
    return Line("engine overhead ≤ 1.10× raw FAISS, recall@10 ≥ 0.98 at ≥ 25× exact QPS, p50 ≤ 1 ms at 1M, open ≤ 2 s",
                f"at {s['items']:,}: overhead {s['overhead_ratio']:.2f}, recall {s['recall_at_10_vs_exact']:.4f} at "
                f"{s['speedup_vs_exact']:.1f}× exact QPS, p50 {s['p50_ms_engine']:.2f} ms", f"raw FAISS; exact {s['qps_exact']:,.0f} QPS",
                verdict(not misses, "; ".join(misses)))


@summary("search_shapes")
def _search_shapes(r: dict) -> Line:
    worst = min(r["rows"], key=lambda x: x["recall_at_10_held_out"] - x["target"])
    ok = all(x["recall_at_10_held_out"] >= x["target"] for x in r["rows"])
    return Line(f"`auto` reaches recall@10 ≥ {worst['target']} on held-out queries on every data shape",
                f"lowest {worst['recall_at_10_held_out']:.3f} ({worst['shape']}, {worst['items']:,})", "exact search (1.000)",
                verdict(ok, f"by {worst['target'] - worst['recall_at_10_held_out']:.3f}"))


@summary("scale_10m")
def _scale_10m(r: dict) -> Line:
    missed = [m for m in (
        f"RAM {r['ram_bytes_per_image']:.0f} B > 1000" if r["ram_bytes_per_image"] + (r["faiss_bytes_per_image"] if r.get("lists") else 0) > 1000 else "",
        f"disk {r['disk_bytes_per_image']:.0f} B > 2500" if r["disk_bytes_per_image"] > 2500 else "",
        f"recall {r['recall_at_10']:.3f} < 0.95" if r["recall_at_10"] < 0.95 else "",
        f"recall vs the vectors as drawn {r['recall_at_10_original']:.3f} < 0.95"
        if r.get("recall_at_10_original") is not None and r["recall_at_10_original"] < 0.95 else "",
        f"p50 {r['p50_ms']:.1f} ms > 20" if r["p50_ms"] > 20 else "",
        f"open {r['open_s']:.1f} s > 2" if r["open_s"] > 2 else "",
        f"batch {r['batch_speedup']:.1f}× < 3" if r["batch_speedup"] < 3 else "",
        f"measured at {r['items']:,} items, not 10M" if r["items"] < 10_000_000 else "") if m]
    return Line("10M images (default encoder's shape): ≤ 1 KB RAM and ≤ 2.5 KB disk per image, held-out recall@10 ≥ 0.95, "
                "p50 ≤ 20 ms, open ≤ 2 s; ≥ 3× BLAS brute force for 1,000-query batches",
                f"{r['items']:,} items: {r['ram_bytes_per_image']:.0f} B RAM"
                + (f" (+ {r['faiss_bytes_per_image']:.0f} B of mapped lists)" if r.get("lists") else "")
                + f", {r['disk_bytes_per_image']:.0f} B disk ({(r.get('storage') or {}).get('dtype')} shards), recall {r['recall_at_10']:.3f}"
                + (f" ({r['recall_at_10_original']:.3f} vs the vectors before storage)" if r.get("recall_at_10_original") is not None else "")
                + ", "
                f"p50 {r['p50_ms']:.1f} ms, open {r['open_s']:.2f} s, batch {r['batch_speedup']:.1f}×",
                f"BLAS brute force {r['brute_qps']:,.0f} queries/s", verdict(not missed, "; ".join(missed)))


@summary("sharded_50m")
def _sharded_50m(r: dict) -> Line:
    ok = r["identical_top10"] >= 0.99
    return Line("4 separate indexes on Ray: the same top-10 as one index in ≥ 99 % of queries when exact",
                f"{100 * r['identical_top10']:.1f} % identical ({r['exact_items']:,} vectors); compact parts recall {r['recall_at_10']:.3f}, "
                f"p50 {r['p50_ms']:.1f} ms", "one exact index over the same vectors", verdict(ok, f"{100 * (0.99 - r['identical_top10']):.1f} points short"))


@summary("search_tuning")
def _search_tuning(r: dict) -> Line:
    rows = [x for x in r["rows"] if x["items"] >= 1_000_000]
    worst = max(rows, key=lambda x: x["overhead"])
    return Line("`auto`'s tuning adds ≤ 10 % to the build at 1M items", f"{100 * worst['overhead']:.1f} % ({worst['shape']})",
                f"the same build without tuning {worst['build_without_tuning_s']:.0f} s",
                verdict(worst["overhead"] <= 0.10, f"{100 * (worst['overhead'] - 0.10):.1f} points over"))


@summary("seeds")
def _seeds(r: dict) -> Line:
    ran = [p for p, run in r["runs"].items() if "error" not in run]
    return Line("none (a check): each seed paper's protocol runs end to end", f"{len(ran)} of {len(r['papers_asked'])} ran",
                "the papers' own figures, beside ours in each table", "ran" if len(ran) == len(r["papers_asked"]) else "**failed**")


@summary("soak")
def _soak(r: dict) -> Line:
    ok = (r["verify_ok"] and r["missing"] == 0 and r["duplicates"] == 0 and not r["writer_failures"] and not r["search_errors"]
          and not r["maintenance_errors"] and r["searches_answered"] == r["searches_asked"])
    return Line(f"{r['items']:,} items, {r['restarts']} writer kills: nothing lost, every search answered",
                f"{r['missing']} missing, {r['duplicates']} duplicates, {r['searches_answered']:,}/{r['searches_asked']:,} searches", "–",
                verdict(ok))


@summary("train")
def _train(r: dict) -> Line:
    return Line(f"batched augmentation ≥ {r['goal_ratio']}× the best per-sample DataLoader",
                f"{r['ours_images_per_s']:.1f} images/s ({r['ratio']:.2f}×)", f"DataLoader {r['peer_best_images_per_s']:.1f} images/s",
                verdict(r["ratio"] >= r["goal_ratio"], short_of(r["ratio"], r["goal_ratio"])))


@summary("train_precision")
def _train_precision(r: dict) -> Line:
    ratio = r["ratio_bf16_vs_fp32_eager"]
    return Line(f"bf16 + channels-last step ≥ {r['goal']}× fp32 eager at {r['size']} px",
                f"{r['step_images_per_s']['bf16']:.1f} images/s ({ratio:.2f}×)", f"fp32 eager {r['step_images_per_s']['eager']:.1f} images/s",
                verdict(ratio >= r["goal"], short_of(ratio, r["goal"])))


@summary("train_quality")
def _train_quality(r: dict) -> Line:
    ours, peer = r["trained"]["map_at_k"], r["random_init"]["map_at_k"]
    return Line("a short SimSiam + HU-views training beats its random initialisation (MAP@5)", f"{ours:.3f}",
                f"random init {peer:.3f}", verdict(ours > peer, f"by {peer - ours:.3f}"))


LOAD = re.compile(r"(\d+(?:\.\d+)?) at (?:start|end)")
LOAD_TEXT = re.compile(r"load average[^0-9]{0,40}?(\d+\.\d+)", re.IGNORECASE)


def highest_load(results: dict, markdown: str = "") -> float | None:
    """The highest 1-min load average a section recorded in its JSON (or, failing that, wrote in its
    text); None when it recorded none."""
    seen = []

    def take(value) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seen.append(float(value))
        elif isinstance(value, str):
            seen.extend(float(x) for x in LOAD.findall(value))
        elif isinstance(value, list) and value:
            if all(isinstance(v, (int, float)) for v in value):
                seen.append(float(value[0]))
            else:
                for v in value:
                    take(v)

    def walk(node, depth: int) -> None:
        if depth > 3:
            return
        items = node.items() if isinstance(node, dict) else ((None, v) for v in node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(key, str) and key.lower().startswith("load"):
                take(value)
            elif isinstance(value, (dict, list)):
                walk(value, depth + 1)

    walk(results, 0)
    if not seen:
        seen = [float(x) for x in LOAD_TEXT.findall(markdown)]
    return max(seen) if seen else None


def line(payload: dict) -> str:
    """The summary table's row for one section."""
    name = payload["benchmark"]
    when = payload["measured_at"][:10]
    load = highest_load(payload["results"], payload.get("markdown", ""))
    measured = f"{when}, load {load:.1f}" if load is not None else f"{when}, load not recorded"
    fn = SUMMARIES.get(name)
    if fn is None:
        cells = ["(no summary line for this section yet: see it below)", "", "", ""]
    else:
        try:
            s = fn(payload["results"])
            cells = [s.goal, s.ours, s.peer, s.result]
        except (KeyError, IndexError, TypeError, ValueError, StopIteration) as exc:
            cells = [f"(its JSON lacks what the summary reads: {type(exc).__name__} {exc}; see the section)", "", "", ""]
    return f"| [{name}](#{name}) | " + " | ".join(cells) + f" | {measured} |"


def table(payloads: list[dict]) -> str:
    head = ["| section | goal | ours | peer / floor | result | measured (highest 1-min load seen) |", "|---|---|---|---|---|---|"]
    return "\n".join(head + [line(p) for p in payloads])
