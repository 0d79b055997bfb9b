// medcbir viewer page, served by the Orthanc plugin at /medcbir/ui/.
// Every request is relative and same-origin (Orthanc's REST API is at ../../, medcbir's at ../),
// so the browser's Orthanc credentials go along and nothing is loaded from anywhere else.
"use strict";

const ORTHANC = "../../";
const MEDCBIR = "../";
const METHOD_NAMES = { relax: "RELAX", occlusion: "occlusion", gradcam: "Grad-CAM", smoothgrad: "SmoothGrad",
  integrated_gradients: "integrated gradients", guided_gradcam: "guided Grad-CAM", gradient: "gradient",
  guided_backprop: "guided backprop", smoothgrad_ig: "SmoothGrad-IG", clustered_cam: "Clustered-CAM",
  ablation_cam: "Ablation-CAM", wildcat: "WILDCAT" };
// seq: the number of the latest search; an answer to an earlier one arrives late and is dropped
const state = { instance: null, neighbours: [], maxExplainK: 10, roi: null, seq: 0 };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

async function getJson(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function postJson(path, body) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(data.error || `${path}: HTTP ${resp.status}`);
  return data;
}

function message(text, isError) {
  const node = $("message");
  node.textContent = text;
  node.className = isError ? "error" : "muted";
}

function formatDate(value) {
  if (!value) return "";
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) return value.slice(0, 10);
  return value.length >= 8 ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : "";
}

function select(list, item) {
  for (const other of list.querySelectorAll(".selected")) other.classList.remove("selected");
  item.classList.add("selected");
}

// Orthanc's own viewer for one instance (Orthanc Explorer, shipped with Orthanc).
function viewerUrl(instance) { return `${ORTHANC}app/explorer.html#instance?uuid=${instance}`; }
function previewUrl(instance) { return `${ORTHANC}instances/${instance}/preview`; }
// medcbir's rendering: stored resolution, reading window (VOI, else CT body-part preset, else percentiles)
function renderUrl(instance) { return `${MEDCBIR}render/${instance}`; }

async function loadStatus() {
  try {
    const s = await getJson(MEDCBIR + "status");
    const fp = (s.encoder && s.encoder.fingerprint) ? String(s.encoder.fingerprint).slice(0, 12) : "?";
    $("status").textContent = `index: ${s.indexed ?? "?"} images, worker ${s.worker}, encoder ${fp}`;
    const methods = s.explain_methods || ["relax"];
    $("method").replaceChildren(...methods.map((m) => el("option", { value: m, text: METHOD_NAMES[m] || m })));
    if (s.limits && s.limits.MaxExplainK) {
      state.maxExplainK = Number(s.limits.MaxExplainK);
      $("k").max = String(state.maxExplainK);  // K neighbours are shown and explained: one bound
      if (Number($("k").value) > state.maxExplainK) $("k").value = String(state.maxExplainK);
    }
  } catch (err) {
    $("status").textContent = `status unavailable (${err.message})`;
  }
}

async function loadStudies() {
  const studies = await getJson(ORTHANC + "studies?expand");
  const list = $("studies");
  list.replaceChildren();
  studies.sort((a, b) => String(b.MainDicomTags.StudyDate || "").localeCompare(String(a.MainDicomTags.StudyDate || "")));
  for (const study of studies) {
    const tags = study.MainDicomTags || {};
    const patient = study.PatientMainDicomTags || {};
    const item = el("li", { "data-study": study.ID,
      text: `${formatDate(tags.StudyDate) || "-"}  ${patient.PatientID || ""}  ${tags.StudyDescription || ""}`.trim() });
    item.addEventListener("click", () => { select(list, item); loadSeries(study.ID); });
    list.appendChild(item);
  }
  message(`${studies.length} ${studies.length === 1 ? "study" : "studies"}. Pick one.`);
}

async function loadSeries(study) {
  const series = await getJson(`${ORTHANC}studies/${study}/series`);
  const list = $("series");
  list.replaceChildren();
  $("instances").replaceChildren();
  for (const s of series) {
    const tags = s.MainDicomTags || {};
    const item = el("li", { "data-series": s.ID,
      text: `${tags.Modality || "?"} #${tags.SeriesNumber || "-"} ${tags.SeriesDescription || ""} (${s.Instances.length})` });
    item.addEventListener("click", () => { select(list, item); loadInstances(s.ID); });
    list.appendChild(item);
  }
}

async function loadInstances(series) {
  const instances = await getJson(`${ORTHANC}series/${series}/instances`);
  instances.sort((a, b) => Number(a.MainDicomTags.InstanceNumber || 0) - Number(b.MainDicomTags.InstanceNumber || 0));
  const box = $("instances");
  box.replaceChildren();
  for (const inst of instances) {
    const img = el("img", { src: previewUrl(inst.ID), "data-instance": inst.ID, loading: "lazy",
      title: `instance ${inst.MainDicomTags.InstanceNumber || ""}`, alt: "instance" });
    img.addEventListener("click", () => { select(box, img); search(inst.ID); });
    box.appendChild(img);
  }
}

function filters() {
  const modality = $("modality").value.trim().toUpperCase();
  // a region search ranks regions: the percentiles of whole-image scores do not apply to it
  const minPct = state.roi ? "" : $("min-percentile").value.trim();
  const k = Math.min(Number($("k").value) || 5, state.maxExplainK);
  return { k, exclude: $("exclude").value, ...(modality ? { modality } : {}), ...(minPct ? { min_percentile: Number(minPct) } : {}) };
}

// The region box [x, y, w, h] in the image's stored pixel grid, typed as "x,y,w,h" (null: none).
function parseBox(text) {
  const parts = text.split(",").map((p) => p.trim());
  if (parts.length !== 4 || !parts.every((p) => /^\d+$/.test(p))) {
    throw new Error(`a box is "x,y,w,h": four whole numbers in the image's pixels, not "${text}"`);
  }
  return parts.map(Number);
}

// A box drawn over an image: its position in percent of the image's stored size, so it stays
// on the same pixels at any displayed size.
function drawBox(frame, box, cls) {
  const img = frame.querySelector("img.thumb");
  const place = () => {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return;
    let node = frame.querySelector(`.${cls}`);
    if (!node) { node = el("div", { class: cls }); frame.appendChild(node); }
    node.dataset.box = box.join(",");
    Object.assign(node.style, { left: `${100 * box[0] / w}%`, top: `${100 * box[1] / h}%`,
      width: `${100 * box[2] / w}%`, height: `${100 * box[3] / h}%` });
  };
  if (img.complete && img.naturalWidth) place(); else img.addEventListener("load", place, { once: true });
}

// Drag on the query image to draw a box; releasing the mouse runs the region search.
function enableDrawing(frame) {
  const img = frame.querySelector("img.thumb");
  let start = null;
  const toPixels = (event) => {
    const r = img.getBoundingClientRect();
    const sx = img.naturalWidth / r.width, sy = img.naturalHeight / r.height;
    return [Math.min(Math.max((event.clientX - r.left) * sx, 0), img.naturalWidth),
            Math.min(Math.max((event.clientY - r.top) * sy, 0), img.naturalHeight)];
  };
  const boxOf = (a, b) => {
    const x = Math.floor(Math.min(a[0], b[0])), y = Math.floor(Math.min(a[1], b[1]));
    return [x, y, Math.max(1, Math.ceil(Math.max(a[0], b[0])) - x), Math.max(1, Math.ceil(Math.max(a[1], b[1])) - y)];
  };
  frame.addEventListener("mousedown", (event) => {
    if (!img.naturalWidth || event.button !== 0) return;
    event.preventDefault();
    start = toPixels(event);
  });
  frame.addEventListener("mousemove", (event) => {
    if (start) drawBox(frame, boxOf(start, toPixels(event)), "roi-box");
  });
  const finish = (event) => {
    if (!start) return;
    const box = boxOf(start, toPixels(event));
    start = null;
    if (box[2] < 2 || box[3] < 2) return;  // a click, not a box: the link opens as before
    frame.dataset.dragged = "1";  // the click that follows this mouseup must not open the link
    setTimeout(() => { delete frame.dataset.dragged; }, 0);
    $("roi").value = box.join(",");
    regionSearch(box);
  };
  frame.addEventListener("mouseup", finish);
  // a drag must not follow the image's link
  frame.querySelector("a.open").addEventListener("click", (event) => { if (frame.dataset.dragged) event.preventDefault(); });
}

// "-314.7 mm (slice 12 of 48)"
function positionText(c) {
  if (c.position_mm === null || c.position_mm === undefined) return "";
  const where = c.index_in_series && c.series_slices ? ` (slice ${c.index_in_series} of ${c.series_slices})` : "";
  return `position ${Number(c.position_mm).toFixed(1)} mm${where}`;
}

function readingLines(c) {
  const lines = [];
  lines.push({ cls: "desc", text: c.series_description || "(no series description)" });
  lines.push({ text: [formatDate(c.study_date), c.modality, c.body_part].filter(Boolean).join(" · ") });
  const pos = positionText(c);
  if (pos) lines.push({ cls: "position", text: pos });
  if (c.label) lines.push({ cls: "label-value", text: `label: ${c.label}` });
  if (c.region) lines.push({ cls: "region", text: `matched region x ${c.region[0]}, y ${c.region[1]}, ${c.region[2]}×${c.region[3]} px` });
  return lines;
}

function card(kind, entry, head, lines) {
  const img = el("img", { src: renderUrl(entry.instance), alt: kind, class: "thumb" });
  const link = el("a", { href: viewerUrl(entry.instance), target: "_blank", rel: "noopener", class: "open" }, [img]);
  const node = el("div", { class: `card ${kind}`, "data-instance": entry.instance, "data-sop": entry.sop || "" },
    [el("div", { class: "frame" }, [link]), el("div", { class: "label", text: head }),
     ...lines.map((line) => el("div", { class: line.cls || "", text: line.text }))]);
  return node;
}

async function search(instance) {
  // a new query image: a box drawn on the previous one does not apply
  state.roi = null;
  $("roi").value = "";
  await runSearch(instance);
}

function regionSearch(box) {
  if (!state.instance) return;
  state.roi = box;
  runSearch(state.instance);
}

async function runSearch(instance) {
  const seq = ++state.seq;
  const roi = state.roi;
  const current = () => seq === state.seq;
  state.instance = instance;
  $("explain").disabled = true;
  $("explain-status").hidden = true;
  $("neighbours").replaceChildren();
  $("clear-roi").disabled = !roi;
  message(roi ? `searching regions like ${roi.join(",")}...` : "searching...");
  const tags = await getJson(`${ORTHANC}instances/${instance}/simplified-tags`).catch(() => ({}));
  if (!current()) return;
  const queryCard = (context) => {
    const node = card("query", { instance, sop: tags.SOPInstanceUID }, "query (drag on the image to search by a region)",
      readingLines({ series_description: tags.SeriesDescription, study_date: tags.StudyDate, modality: tags.Modality,
                     body_part: tags.BodyPartExamined, ...context }));
    $("query").replaceChildren(node);
    enableDrawing(node.querySelector(".frame"));
    return node;
  };
  try {
    const f = filters();
    // per_series 0: the neighbours shown are the ones an explanation explains, rank for rank
    const answer = await postJson(MEDCBIR + "search", { instance, per_series: 0, ...f, ...(roi ? { roi } : {}) });
    if (!current()) return;
    const query = queryCard(answer.query_context || {});
    if (answer.query_region) drawBox(query.querySelector(".frame"), answer.query_region, "roi-box");
    state.neighbours = answer.neighbours;
    const cards = answer.neighbours.map((n) => {
      const node = card("neighbour", { instance: n.instance, sop: n.sop_instance_uid },
        `#${n.rank} · score ${Number(n.score).toFixed(4)}` + (n.percentile !== null && n.percentile !== undefined ? ` · percentile ${Number(n.percentile).toFixed(1)}` : ""),
        readingLines(n));
      // the region of this neighbour that matched the query's box
      if (n.region) drawBox(node.querySelector(".frame"), n.region, "region-box");
      return node;
    });
    $("neighbours").replaceChildren(...cards);
    if (!answer.neighbours.length) {
      message(answer.message ? `${answer.message} (min. percentile ${f.min_percentile ?? "-"}).` : "no neighbours.");
      return;
    }
    const excluded = { "same-series": "the query's series", "same-study": "the query's study", "same-patient": "the query's patient", none: "nothing" }[f.exclude];
    const what = roi ? `region matches of box ${roi.join(",")}, each with its matched region` : "neighbours";
    message(`${answer.neighbours.length} ${what} (k=${answer.k}; left out: ${excluded}).`);
    $("explain").disabled = false;
  } catch (err) {
    if (!current()) return;
    queryCard({});  // the query stays on screen (a box can be drawn again)
    if (roi) drawBox($("query").querySelector(".frame"), roi, "roi-box");
    message(`${roi ? "region search" : "search"} failed: ${err.message}`, true);
  }
}

function addOverlay(cardNode, overlayInstance, method, src) {
  const frame = cardNode.querySelector(".frame");
  for (const old of frame.querySelectorAll(".overlay")) old.remove();
  const title = src ? `${method} map of the matched region (not for diagnosis)` : `${method} heatmap (stored in the PACS; not for diagnosis)`;
  const img = el("img", { src: src || previewUrl(overlayInstance), alt: `${method} heatmap`, class: "overlay", title });
  if (overlayInstance) img.setAttribute("data-overlay", overlayInstance);
  const box = frame.querySelector(".region-box");
  frame.insertBefore(img, box);  // the matched box stays on top
  if (!cardNode.querySelector(".caveat")) cardNode.appendChild(el("div", { class: "caveat", text: `${method} heatmap: not for diagnosis` }));
}

// With a box: why each neighbour's region matched (maps computed over the neighbour, sent back
// as pictures of the neighbour with its map and matched box; nothing is stored in the PACS).
async function explainRegions(method, name) {
  const { k, exclude } = filters();
  message(`explaining the region matches with ${name}...`);
  const answer = await postJson(MEDCBIR + "explain", { instance: state.instance, k, exclude, method, roi: state.roi, format: "json" });
  answer.neighbours.forEach((n) => {
    const target = document.querySelector(`#neighbours .card[data-sop="${n.sop_instance_uid}"]`);
    if (target) addOverlay(target, null, `region-match ${name}`, `data:image/png;base64,${n.overlay_png}`);
  });
  const status = $("explain-status");
  status.replaceChildren(el("div", { text: answer.status.text }), el("div", { class: "caveat", text: answer.caveat || "not for diagnosis" }));
  status.hidden = false;
  message(`region-match ${name}: ${answer.neighbours.length} maps (${answer.explain_seconds} s).`);
}

async function explain() {
  if (!state.instance) return;
  const method = $("method").value;
  const name = METHOD_NAMES[method] || method;
  $("explain").disabled = true;
  if (state.roi) {
    try { await explainRegions(method, name); } catch (err) { message(`explanation failed: ${err.message}`, true); }
    $("explain").disabled = false;
    return;
  }
  message(`explaining with ${name}... (the overlays are stored in the PACS and appear here when ready)`);
  try {
    const { k, exclude } = filters();
    const answer = await postJson(MEDCBIR + "explain", { instance: state.instance, k, exclude, method, store: true });
    const overlays = answer.stored.overlays;
    addOverlay($("query").querySelector(".card"), overlays[0].instance, name);
    answer.neighbours.forEach((n, i) => {
      const target = document.querySelector(`#neighbours .card[data-sop="${n.sop_instance_uid}"]`);
      if (target) addOverlay(target, overlays[i + 1].instance, name);
    });
    const status = $("explain-status");
    status.replaceChildren(el("div", { text: answer.status ? answer.status.text : `${name}: not evaluated` }),
      el("div", { class: "caveat", text: answer.caveat || "not for diagnosis" }));
    status.hidden = false;
    message(`${name}: ${overlays.length} overlays stored in the PACS (${answer.explain_seconds} s).`);
  } catch (err) {
    message(`explanation failed: ${err.message}`, true);
  } finally {
    $("explain").disabled = false;
  }
}

$("explain").addEventListener("click", explain);
$("roi").addEventListener("change", () => {
  const text = $("roi").value.trim();
  if (!state.instance) { message("pick an instance first, then draw or type a box on it.", true); return; }
  if (!text) { state.roi = null; runSearch(state.instance); return; }
  let box;
  try { box = parseBox(text); } catch (err) {
    state.seq += 1;  // a search still under way must not overwrite this
    message(err.message, true);
    return;
  }
  regionSearch(box);
});
$("clear-roi").addEventListener("click", () => { $("roi").value = ""; state.roi = null; if (state.instance) runSearch(state.instance); });
$("show-overlays").addEventListener("change", (e) => document.body.classList.toggle("no-overlays", !e.target.checked));
loadStatus();
loadStudies().catch((err) => message(`cannot list studies: ${err.message}`, true));
