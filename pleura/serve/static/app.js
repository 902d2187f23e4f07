// pleura serve: the page. Plain JavaScript, no library, no build step; every string from a file or the server is
// put in the page as text (textContent), never as HTML.
"use strict";

const CLASS_COLORS = { covid: "#e5484d", pneumonia: "#f2a93b", normal: "#3fb96b" };
const SPARE_COLORS = ["#4ea3ff", "#c678dd", "#56b6c2", "#d19a66"];
let MODEL = null; // GET /api/models

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmt(v) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
  return String(v);
}

function classColor(name, k) {
  return CLASS_COLORS[name] || SPARE_COLORS[k % SPARE_COLORS.length];
}

function newTicket() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- upload: XHR for its upload progress; the server's frame progress is polled by ticket ----

function upload(file, onProgress) {
  return new Promise((resolve) => {
    const ticket = newTicket();
    const xhr = new XMLHttpRequest();
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.open("POST", `/api/predict?ticket=${ticket}`);
    xhr.responseType = "json";
    let polling = null;
    const poll = async () => {
      try {
        const r = await fetch(`/api/progress/${ticket}`);
        if (r.ok) onProgress({ server: await r.json() });
      } catch (e) { /* the answer will tell */ }
    };
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress({ sent: e.loaded, total: e.total }); };
    xhr.upload.onload = () => { onProgress({ sent: 1, total: 1 }); polling = setInterval(poll, 400); };
    const finish = (result) => { if (polling) clearInterval(polling); resolve(result); };
    xhr.onload = () => finish({
      status: xhr.status, body: xhr.response, result: xhr.getResponseHeader("X-Pleura-Result"),
      retryAfter: Number(xhr.getResponseHeader("Retry-After") || 0),
    });
    xhr.onerror = () => finish({ status: 0, body: { error: "the server did not answer (is pleura serve running?)" } });
    xhr.send(form);
  });
}

async function uploadWithRetry(file, onProgress, onBusy) {
  for (let attempt = 0; ; attempt++) {
    const answer = await upload(file, onProgress);
    if (answer.status !== 503 || attempt >= 5) return answer;
    const wait = Math.round(Math.min(60, Math.max(1, answer.retryAfter || 2)) * (1 + Math.random() / 2)); // jitter
    onBusy(wait);
    await new Promise((r) => setTimeout(r, wait * 1000));
  }
}

// ---- one file's card ----

function progressCard(file) {
  const up = el("div");
  const fr = el("div");
  const status = el("p", { class: "status", text: "waiting" });
  const card = el("article", { class: "card" },
    el("h2", { text: file.name }),
    el("div", { class: "bar upload", title: "upload" }, up),
    el("div", { class: "bar frames", title: "frames analysed" }, fr),
    status);
  return {
    card, status,
    update(p) {
      if (p.total) {
        up.style.width = `${Math.round((100 * p.sent) / p.total)}%`;
        status.textContent = p.sent < p.total ? `uploading ${(p.sent / 1e6).toFixed(1)} of ${(p.total / 1e6).toFixed(1)} MB` : "uploaded";
      }
      if (p.server) {
        const s = p.server;
        if (s.expected) fr.style.width = `${Math.min(100, Math.round((100 * s.frames) / s.expected))}%`;
        const of = s.expected ? ` of about ${s.expected}` : "";
        const what = { check: "checking the file", queued: "waiting for a worker", predict: `analysing: ${s.frames}${of} frames`,
          write: "writing the outputs", done: "done", upload: "uploading" }[s.stage] || s.stage;
        status.textContent = what;
      }
    },
  };
}

function probabilityBars(probs, diagnosis) {
  const box = el("div", { class: "probs" });
  for (const [name, p] of Object.entries(probs)) {
    const fill = el("div", { class: name === diagnosis ? "fill top" : "fill" });
    fill.style.width = `${Math.max(1, Math.round(100 * p))}%`;
    box.append(el("span", { text: name }), el("div", {}, fill), el("span", { text: p.toFixed(2) }));
  }
  return box;
}

function oodWarning(file) {
  const n = file.frames.length;
  if (file.diagnosis === null) {
    return el("div", { class: "ood all", role: "alert" },
      el("strong", { text: "Out of distribution: no diagnosis. " }),
      `None of the ${n} analysed frame${n === 1 ? "" : "s"} looks like the lung ultrasound the model was trained on ` +
      "(image statistics or network features too far from its training frames). This may not be a lung-ultrasound " +
      "image at all. Do not read anything into the probabilities below.");
  }
  if (file.ood_frames === n) {
    return el("div", { class: "ood all", role: "alert" },
      el("strong", { text: "Every frame is out of distribution: do not trust this diagnosis. " }),
      `All ${n} analysed frame${n === 1 ? "" : "s"} look unlike the lung ultrasound the model was trained on (another ` +
      "scanner or site, or not lung ultrasound). The server was started with --ood warn, so the diagnosis is shown.");
  }
  if (file.ood_frames > 0) {
    return el("div", { class: "ood some", role: "alert" },
      el("strong", { text: "Some frames are out of distribution. " }),
      `${file.ood_frames} of ${n} frames look unlike the training data; they were left out of the diagnosis and ` +
      "their own results should not be trusted.");
  }
  return null;
}

function biomarkerTable(bm) {
  const t = el("table", { class: "kv" });
  for (const [k, v] of Object.entries(bm || {})) t.append(el("tr", {}, el("td", { text: k.replaceAll("_", " ") }), el("td", { text: fmt(v) })));
  return t;
}

function severityBlock(file) {
  const box = el("div");
  if ("severity" in file) { // the clip's severity score and its rule (pleura.postprocess.severity)
    let score = file.severity, rule = file.severity_rule;
    if (score !== null && typeof score === "object") { rule = score.rule || rule; score = score.score; }
    box.append(el("div", { class: "score severity", text: score === null || score === undefined ? "Severity: not scored" : `Severity score ${fmt(score)} (0-3)` }));
    if (rule) box.append(el("p", { class: "note", text: `rule: ${rule}` }));
  }
  const aer = (file.biomarkers || {}).aeration_score;
  if (aer !== undefined) {
    box.append(el("div", { class: "severity" in file ? "" : "score", text: `Aeration score ${fmt(aer)} (0-3, biomarkers)` }));
    box.append(el("p", { class: "note", text: "rule (pleura biomarkers, worst frame): 3 tissue-like consolidation; " +
      "2 confluent B-lines or consolidation over half the pleural line; 1 three or more B-lines, a confluent B-line " +
      "or a small subpleural consolidation; else 0." }));
  }
  return box;
}

// ---- the player: cleaned frames with their segmentation classes and Grad-CAM, toggled on a canvas ----

async function player(files) {
  const [meta, frames, labels, cams] = await Promise.all([
    fetch(files["player.json"]).then((r) => r.json()),
    ...["frames.bin", "labels.bin", "cam.bin"].map((k) => fetch(files[k]).then((r) => r.arrayBuffer()).then((b) => new Uint8Array(b))),
  ]);
  const S = meta.size;
  const canvas = el("canvas", { width: S, height: S, "aria-label": "frame with segmentation overlay" });
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(S, S);
  const on = meta.classes.map((c) => !["background", "outside_scan"].includes(c.name));
  let camOn = false;
  let k = 0;
  const toggles = el("div", { class: "toggles" });
  meta.classes.forEach((c, i) => {
    if (c.name === "background") return;
    const box = el("input", { type: "checkbox" });
    box.checked = on[i];
    box.addEventListener("change", () => { on[i] = box.checked; draw(); });
    const sw = el("span", { class: "swatch" });
    sw.style.background = `rgb(${c.color.join(",")})`;
    toggles.append(el("label", {}, box, sw, c.name.replaceAll("_", " ")));
  });
  const camBox = el("input", { type: "checkbox" });
  camBox.addEventListener("change", () => { camOn = camBox.checked; draw(); });
  toggles.append(el("label", {}, camBox, `Grad-CAM (${meta.cam_class})`));
  const slider = el("input", { type: "range", min: "0", max: String(meta.count - 1), value: "0" });
  const label = el("span", { class: "note" });
  const play = el("button", { type: "button", text: "Pause" });
  let timer = null;
  const listeners = [];

  function draw() {
    const off = k * S * S;
    const d = image.data;
    for (let p = 0; p < S * S; p++) {
      let r = frames[off + p], g = r, b = r;
      const c = labels[off + p];
      if (on[c]) {
        const col = meta.classes[c].color;
        r = 0.55 * r + 0.45 * col[0]; g = 0.55 * g + 0.45 * col[1]; b = 0.55 * b + 0.45 * col[2];
      }
      if (camOn) {
        const w = (0.5 * cams[off + p]) / 255;
        const h = cams[off + p] / 255;
        r = (1 - w) * r + w * 255 * Math.min(1, 2 * h); g = (1 - w) * g + w * 255 * Math.min(1, Math.max(0, 2 * h - 1)); b = (1 - w) * b;
      }
      d[4 * p] = r; d[4 * p + 1] = g; d[4 * p + 2] = b; d[4 * p + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    const f = meta.frames[k];
    label.textContent = `frame ${f.index} · ${f.time_s.toFixed(2)} s · ${f.diagnosis}${f.ood ? " · out of distribution" : ""}`;
    slider.value = String(k);
    listeners.forEach((fn) => fn(f.time_s));
  }
  function show(i) { k = Math.max(0, Math.min(meta.count - 1, i)); draw(); }
  function start() { if (meta.count > 1 && !timer) { timer = setInterval(() => show((k + 1) % meta.count), 150); play.textContent = "Pause"; } }
  function stop() { clearInterval(timer); timer = null; play.textContent = "Play"; }
  play.addEventListener("click", () => (timer ? stop() : start()));
  slider.addEventListener("input", () => { stop(); show(Number(slider.value)); });
  draw();
  start();
  if (meta.count < 2) play.disabled = true;
  const node = el("div", { class: "player" }, canvas, toggles, el("div", { class: "controls" }, play, slider), label);
  return {
    node,
    onTime: (fn) => listeners.push(fn),
    seek(time) { // the nearest sampled frame
      let best = 0;
      meta.frames.forEach((f, i) => { if (Math.abs(f.time_s - time) < Math.abs(meta.frames[best].time_s - time)) best = i; });
      stop(); show(best);
    },
  };
}

// ---- the timeline: every analysed frame's calibrated probabilities, out-of-distribution frames shaded ----

function timeline(doc, file, onSeek) {
  const canvas = el("canvas", { class: "timeline", width: "720", height: "150", "aria-label": "per-frame probabilities" });
  const legend = el("div", { class: "toggles" });
  doc.class_names.forEach((c, i) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = classColor(c, i);
    legend.append(el("span", {}, sw, c));
  });
  const shade = el("span", { class: "swatch" });
  shade.style.background = "#555";
  legend.append(el("span", {}, shade, "out of distribution"));
  const frames = file.frames;
  const t0 = frames.length ? frames[0].time_s : 0;
  const t1 = frames.length > 1 ? frames[frames.length - 1].time_s : t0 + 1;
  let cursor = null;
  const W = 720, H = 150, L = 30, R = 10, T = 8, B = 20;
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1e-6)) * (W - L - R);
  const y = (p) => T + (1 - p) * (H - T - B);
  function draw() {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "#555";
    const step = frames.length > 1 ? (W - L - R) / (frames.length - 1) : W - L - R;
    frames.forEach((f) => { if (f.ood) ctx.fillRect(x(f.time_s) - step / 2, T, Math.max(step, 2), H - T - B); });
    ctx.strokeStyle = "#333"; ctx.fillStyle = "#888"; ctx.font = "11px sans-serif";
    for (const p of [0, 0.5, 1]) { ctx.beginPath(); ctx.moveTo(L, y(p)); ctx.lineTo(W - R, y(p)); ctx.stroke(); ctx.fillText(p.toFixed(1), 2, y(p) + 4); }
    ctx.fillText(`${t0.toFixed(1)} s`, L, H - 5);
    ctx.fillText(`${t1.toFixed(1)} s`, W - R - 40, H - 5);
    doc.class_names.forEach((c, i) => {
      ctx.strokeStyle = classColor(c, i); ctx.lineWidth = 2; ctx.beginPath();
      frames.forEach((f, j) => { const px = x(f.time_s), py = y(f.probabilities[c]); if (j) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
      if (frames.length === 1) { ctx.arc(x(t0), y(frames[0].probabilities[c]), 3, 0, 7); }
      ctx.stroke();
    });
    if (cursor !== null) { ctx.strokeStyle = "#fff"; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(x(cursor), T); ctx.lineTo(x(cursor), H - B); ctx.stroke(); }
  }
  canvas.addEventListener("click", (e) => {
    const rect = canvas.getBoundingClientRect();
    const t = t0 + (((e.clientX - rect.left) * (W / rect.width) - L) / (W - L - R)) * (t1 - t0);
    onSeek(t);
  });
  draw();
  return { node: el("div", {}, canvas, legend), setCursor(t) { cursor = t; draw(); } };
}

async function renderResult(view, doc, rid) {
  const file = doc.files[0];
  const index = await fetch(`/api/results/${rid}`).then((r) => r.json());
  const files = index.files;
  const body = el("div", { class: "result" });
  body.append(el("div", { class: file.diagnosis === null ? "diagnosis none" : "diagnosis",
    text: file.diagnosis === null ? "No diagnosis" : `${file.diagnosis}` }));
  const warn = oodWarning(file);
  if (warn) body.append(warn);
  body.append(probabilityBars(file.probabilities, file.diagnosis));
  const n = file.frames.length, good = n - file.ood_frames;
  const over = good > 0 ? `the ${good} in-distribution frame(s) of ${n}` : `all ${n} frame(s), none in distribution`;
  body.append(el("p", { class: "note", text: `calibrated probabilities (temperature ${doc.temperature.toFixed(3)}), mean over ` +
    `${over}; probe: ${file.probe || "n/a"}; model ${doc.model}` }));

  const grid = el("div", { class: "grid" });
  if (files["annotated.mp4"]) {
    const video = el("video", { controls: "", loop: "", muted: "", autoplay: "", playsinline: "", src: files["annotated.mp4"], class: "overlay" });
    video.muted = true;
    grid.append(el("div", {}, el("h3", { text: "Overlay video (frame | segmentation)" }), video));
  }
  let seek = () => {};
  if (files["player.json"]) {
    const box = el("div", {}, el("h3", { text: "Segmentation classes and Grad-CAM, frame by frame" }));
    grid.append(box);
    try {
      const p = await player(files);
      box.append(p.node);
      seek = (t) => p.seek(t);
      view.onTime = p.onTime;
    } catch (e) { box.append(el("p", { class: "error", text: `the player could not load (${e})` })); }
  }
  if (files["figure.png"]) {
    grid.append(el("div", {}, el("h3", { text: "Most confident frame: frame | segmentation | Grad-CAM" }),
      el("img", { src: files["figure.png"], class: "figure", alt: "most confident frame" })));
  }
  body.append(grid);

  const lower = el("div", { class: "grid" });
  const tl = timeline(doc, file, (t) => seek(t));
  if (view.onTime) view.onTime((t) => tl.setCursor(t));
  lower.append(el("div", {}, el("h3", { text: "Per-frame probabilities" }), tl.node));
  lower.append(el("div", { class: "biomarkers" }, el("h3", { text: "Biomarkers (clip: worst frame for counts and scores)" }), biomarkerTable(file.biomarkers)));
  lower.append(el("div", {}, el("h3", { text: "Score" }), severityBlock(file)));
  if (file.masks !== undefined) lower.append(el("div", {}, el("h3", { text: "Masks" }), el("p", { class: "note", text: JSON.stringify(file.masks).slice(0, 400) })));
  body.append(lower);

  const names = { "predictions.json": "JSON", "clips.csv": "CSV (file)", "frames.csv": "CSV (frames)",
    "annotated.mp4": "annotated MP4", "figure.png": "figure PNG", "masks.zip": "masks (PNG, zip)" };
  const dl = el("div", { class: "downloads" }, el("strong", { text: "Downloads:" }));
  for (const [k, label] of Object.entries(names)) if (files[k]) dl.append(el("a", { href: `${files[k]}?download=true`, text: label }));
  body.append(dl);
  return body;
}

async function analyse(file, container) {
  const view = progressCard(file);
  container.prepend(view.card);
  const answer = await uploadWithRetry(file, (p) => view.update(p), (s) => { view.status.textContent = `the server is busy: retrying in ${s} s`; });
  if (answer.status !== 200) {
    view.status.replaceWith(el("p", { class: "error", role: "alert", text: (answer.body && answer.body.error) || `error ${answer.status}` }));
    return null;
  }
  view.card.querySelectorAll(".bar").forEach((b) => b.remove());
  view.status.textContent = `${answer.body.files[0].frames.length} frame(s) analysed`;
  view.card.append(await renderResult(view, answer.body, answer.result));
  return answer;
}

// ---- the exam view ----

const examRows = [];

function guessZone(name) {
  const m = /(?:^|[^A-Za-z0-9])([RL])0*([1-9])(?![0-9])/i.exec(name.replace(/\.[^.]*$/, ""));
  return m ? `${m[1].toUpperCase()}${m[2]}` : "";
}

function schemeZones() {
  const scheme = document.getElementById("scheme").value;
  return ((MODEL && MODEL.zones) || {})[scheme] || {};
}

function fillZones(select, wanted) {
  select.replaceChildren(el("option", { value: "", text: "choose a zone" }));
  for (const [z, where] of Object.entries(schemeZones())) select.append(el("option", { value: z, text: `${z} (${where})` }));
  select.value = wanted in schemeZones() ? wanted : "";
}

function examReady() {
  const zones = examRows.map((r) => r.select.value);
  const ok = examRows.length > 0 && zones.every((z) => z) && new Set(zones).size === zones.length;
  document.getElementById("exam-run").disabled = !ok;
}

function addExamFiles(list) {
  const body = document.querySelector("#exam-files tbody");
  for (const file of list) {
    const select = el("select", { "aria-label": `zone of ${file.name}` });
    fillZones(select, guessZone(file.name));
    select.addEventListener("change", examReady);
    const status = el("td", { text: "ready" });
    body.append(el("tr", {}, el("td", { text: file.name }), el("td", {}, select), status));
    examRows.push({ file, select, status });
  }
  examReady();
}

async function runExam() {
  const button = document.getElementById("exam-run");
  button.disabled = true;
  const out = document.getElementById("exam-result");
  out.replaceChildren();
  const zones = {};
  for (const row of examRows) {
    row.status.textContent = "uploading";
    const answer = await uploadWithRetry(row.file, (p) => {
      if (p.server) row.status.textContent = p.server.stage === "predict" ? `analysing: ${p.server.frames} frames` : p.server.stage;
    }, (s) => { row.status.textContent = `busy: retrying in ${s} s`; });
    if (answer.status !== 200) { row.status.textContent = (answer.body && answer.body.error) || `error ${answer.status}`; continue; }
    const f = answer.body.files[0];
    row.status.textContent = f.diagnosis === null ? "no diagnosis (out of distribution)" : `${f.diagnosis} ${f.probabilities[f.diagnosis].toFixed(2)}`;
    zones[row.select.value] = answer.result;
  }
  button.disabled = false;
  if (!Object.keys(zones).length) { out.append(el("p", { class: "error", text: "no clip of the exam could be analysed" })); return; }
  // Scored on the server by pleura score's code (pleura.infer.exam), from each clip's severity score.
  const r = await fetch("/api/exam", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ patient: document.getElementById("patient").value, scheme: document.getElementById("scheme").value, zones }) });
  const exam = await r.json();
  if (!r.ok) { out.append(el("p", { class: "error", text: exam.error || `error ${r.status}` })); return; }
  const table = el("table", { class: "zones" }, el("tr", {}, ...["zone", "file", "diagnosis", "score", "rule"].map((h) => el("th", { text: h }))));
  for (const z of exam.zones.filter((z) => z.uploaded)) {
    table.append(el("tr", {}, el("td", { text: `${z.zone} (${z.label})` }), el("td", { text: z.file }),
      el("td", { text: z.diagnosis === null ? "none (out of distribution)" : z.diagnosis }), el("td", { text: fmt(z.score) }), el("td", { class: "note", text: z.rule })));
  }
  const total = exam.total === null ? "n/a" : `${exam.total} of ${exam.max_total}`;
  const missing = exam.zones.filter((z) => !z.uploaded).map((z) => z.zone);
  out.append(el("article", { class: "card exam" },
    el("h2", { text: `Exam${exam.patient ? `: ${exam.patient}` : ""}` }),
    el("div", { class: "score", text: `Total severity score ${total} (${exam.zones_scored} of ${exam.zones_total} zones scored, ${exam.scheme}-zone scheme)` }),
    missing.length ? el("p", { class: "note", text: `no clip for ${missing.join(", ")}` }) : null,
    el("img", { src: exam.files["chest_map.png"], class: "chest", alt: "chest map with each zone's score" }),
    table,
    el("div", { class: "downloads" }, el("strong", { text: "Report:" }),
      el("a", { href: `${exam.files["report.html"]}?download=true`, text: "HTML (print it to PDF)" }),
      el("a", { href: `${exam.files["score.json"]}?download=true`, text: "JSON" }),
      el("a", { href: `${exam.files["score.csv"]}?download=true`, text: "CSV" }),
      el("a", { href: `${exam.files["score.md"]}?download=true`, text: "Markdown" }))));
}

// ---- wiring ----

function dropZone(zone, input, onFiles) {
  input.addEventListener("change", () => { onFiles(Array.from(input.files)); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); onFiles(Array.from(e.dataTransfer.files)); });
}

let queue = Promise.resolve();

document.addEventListener("DOMContentLoaded", async () => {
  const results = document.getElementById("results");
  dropZone(document.getElementById("drop"), document.getElementById("pick"), (files) => {
    for (const f of files) queue = queue.then(() => analyse(f, results)).catch((e) => console.error(e));
  });
  dropZone(document.getElementById("exam-drop"), document.getElementById("exam-pick"), addExamFiles);
  document.getElementById("exam-run").addEventListener("click", runExam);
  document.getElementById("scheme").addEventListener("change", () => {
    for (const row of examRows) fillZones(row.select, row.select.value || guessZone(row.file.name));
    examReady();
  });
  const tabs = { "tab-files": "files-view", "tab-exam": "exam-view" };
  for (const [tab, view] of Object.entries(tabs)) {
    document.getElementById(tab).addEventListener("click", () => {
      for (const [t, v] of Object.entries(tabs)) {
        document.getElementById(t).classList.toggle("active", t === tab);
        document.getElementById(t).setAttribute("aria-selected", String(t === tab));
        document.getElementById(v).hidden = v !== view;
      }
    });
  }
  try {
    MODEL = await fetch("/api/models").then((r) => r.json());
    const m = MODEL.loaded;
    document.getElementById("model").textContent = `model: ${m.name} (${m.class_names.join(" / ")}, ${m.image_size} px)`;
    document.getElementById("limits").textContent = `Up to ${MODEL.limits.max_upload_mb} MB per file. The kind of a file is ` +
      "read from its content (PNG, JPEG, BMP, GIF, TIFF, MP4/AVI/MOV/MKV/WebM clips, DICOM), not from its name.";
  } catch (e) { document.getElementById("model").textContent = "model: the server did not answer"; }
  document.body.dataset.ready = "true";
});
