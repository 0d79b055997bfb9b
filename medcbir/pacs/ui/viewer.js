// medcbir viewer page, served by the Orthanc plugin at /medcbir/ui/.
// Every request is relative and same-origin (Orthanc's REST API is at ../../, medcbir's at ../),
// so the browser's Orthanc credentials go along and nothing is loaded from anywhere else.
"use strict";

const ORTHANC = "../../";
const MEDCBIR = "../";
const state = { instance: null, neighbours: [], studyDates: {} };

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
  return value && value.length >= 8 ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : "-";
}

function select(list, item) {
  for (const other of list.querySelectorAll(".selected")) other.classList.remove("selected");
  item.classList.add("selected");
}

// Orthanc's own viewer for one instance (Orthanc Explorer, shipped with Orthanc).
function viewerUrl(instance) { return `${ORTHANC}app/explorer.html#instance?uuid=${instance}`; }
function previewUrl(instance) { return `${ORTHANC}instances/${instance}/preview`; }

async function loadStatus() {
  try {
    const s = await getJson(MEDCBIR + "status");
    const fp = (s.encoder && s.encoder.fingerprint) ? String(s.encoder.fingerprint).slice(0, 12) : "?";
    $("status").textContent = `index: ${s.indexed ?? "?"} images, worker ${s.worker}, encoder ${fp}`;
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
    state.studyDates[study.ID] = tags.StudyDate || "";
    const item = el("li", { "data-study": study.ID,
      text: `${formatDate(tags.StudyDate)}  ${patient.PatientID || ""}  ${tags.StudyDescription || ""}`.trim() });
    item.addEventListener("click", () => { select(list, item); loadSeries(study.ID); });
    list.appendChild(item);
  }
  message(`${studies.length} studies. Pick one.`);
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
  return { k: Number($("k").value) || 6, exclude: $("exclude").value, ...(modality ? { modality } : {}) };
}

async function studyDate(study) {
  if (!study) return "";
  if (!(study in state.studyDates)) {
    const info = await getJson(`${ORTHANC}studies/${study}`).catch(() => ({ MainDicomTags: {} }));
    state.studyDates[study] = info.MainDicomTags.StudyDate || "";
  }
  return state.studyDates[study];
}

function card(kind, entry, lines) {
  const link = el("a", { href: viewerUrl(entry.instance), target: "_blank", rel: "noopener", class: "open" },
    [el("img", { src: previewUrl(entry.instance), alt: kind, class: "thumb" })]);
  const node = el("div", { class: `card ${kind}`, "data-instance": entry.instance, "data-sop": entry.sop || "" },
    [el("div", { class: "pics" }, [link]), ...lines.map((text, i) => el("div", { class: i ? "" : "label", text }))]);
  return node;
}

async function search(instance) {
  state.instance = instance;
  $("explain").disabled = true;
  $("neighbours").replaceChildren();
  message("searching...");
  try {
    const answer = await postJson(MEDCBIR + "search", { instance, per_series: 0, ...filters() });
    const tags = await getJson(`${ORTHANC}instances/${instance}/simplified-tags`).catch(() => ({}));
    $("query").replaceChildren(card("query", { instance, sop: tags.SOPInstanceUID },
      ["query", `${tags.Modality || ""} ${formatDate(tags.StudyDate)}`]));
    state.neighbours = answer.neighbours;
    const cards = [];
    for (const n of answer.neighbours) {
      const date = await studyDate(n.study);
      cards.push(card("neighbour", { instance: n.instance, sop: n.sop_instance_uid },
        [`#${n.rank} score ${Number(n.score).toFixed(4)}`, `${n.modality || "?"} ${formatDate(date)}`]));
    }
    $("neighbours").replaceChildren(...cards);
    message(`${answer.neighbours.length} neighbours (k=${answer.k}, exclude ${filters().exclude}).`);
    $("explain").disabled = false;
  } catch (err) {
    message(`search failed: ${err.message}`, true);
  }
}

function addOverlay(cardNode, overlayInstance) {
  const pics = cardNode.querySelector(".pics");
  for (const old of pics.querySelectorAll(".overlay")) old.remove();
  pics.appendChild(el("a", { href: viewerUrl(overlayInstance), target: "_blank", rel: "noopener", class: "overlay" },
    [el("img", { src: previewUrl(overlayInstance), alt: "explanation overlay" })]));
}

async function explain() {
  if (!state.instance) return;
  const method = $("method").value;
  $("explain").disabled = true;
  message(`explaining with ${method}... (the overlays are stored in the PACS and appear here when ready)`);
  try {
    const { k, exclude } = filters();
    const answer = await postJson(MEDCBIR + "explain", { instance: state.instance, k: Math.min(k, 5), exclude, method, store: true });
    const overlays = answer.stored.overlays;
    addOverlay($("query").querySelector(".card"), overlays[0].instance);
    answer.neighbours.forEach((n, i) => {
      let target = document.querySelector(`#neighbours .card[data-sop="${n.sop_instance_uid}"]`);
      if (!target) {  // explained but not shown (e.g. another K): add its card
        target = card("neighbour", { instance: null, sop: n.sop_instance_uid }, [`#${n.rank} score ${Number(n.score).toFixed(4)}`, n.modality || ""]);
        target.querySelector(".open").remove();
        $("neighbours").appendChild(target);
      }
      addOverlay(target, overlays[i + 1].instance);
    });
    message(`${method}: ${overlays.length} overlays stored in the PACS (${answer.explain_seconds} s).`);
  } catch (err) {
    message(`explanation failed: ${err.message}`, true);
  } finally {
    $("explain").disabled = false;
  }
}

$("explain").addEventListener("click", explain);
loadStatus();
loadStudies().catch((err) => message(`cannot list studies: ${err.message}`, true));
