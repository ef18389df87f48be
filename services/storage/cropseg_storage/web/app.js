// cropseg web UI: plain JavaScript, no build step, talks only to this service's API.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cropseg-token";
const state = { selected: null, authentication: false, layouts: [] };

// ---------- API ----------

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = localStorage.getItem(TOKEN_KEY);
  if (token && options.method && options.method !== "GET") headers.set("Authorization", `Bearer ${token}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new ApiError("The service cannot be reached. Check your connection and try again.");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      const error = body.error;
      message = typeof error === "string" ? error : (error && error.message) || message;
    } catch (_) { /* not JSON */ }
    if (response.status === 401 || response.status === 403) {
      $("token-button").hidden = false;
      message += " — set the API token (top right).";
    }
    throw new ApiError(message);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

// ---------- helpers ----------

function showAlert(message, kind = "error") {
  $("alert-text").textContent = message;
  $("alert").className = `alert ${kind === "info" ? "info" : ""}`;
  $("alert").hidden = false;
}
const hideAlert = () => { $("alert").hidden = true; };
$("alert-close").addEventListener("click", hideAlert);

function busy(text) {
  $("busy").hidden = !text;
  $("busy-text").textContent = text || "";
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const percent = (value) => `${(100 * value).toFixed(1)} %`;
const when = (iso) => new Date(iso).toLocaleString();

// "6 min", "5 h", "7 days": how long ago an ISO time was.
function since(iso) {
  const minutes = (Date.now() - new Date(iso).getTime()) / 60000;
  if (minutes < 90) return `${Math.max(1, Math.round(minutes))} min`;
  if (minutes < 48 * 60) return `${Math.round(minutes / 60)} h`;
  return `${Math.round(minutes / 1440)} days`;
}

function loadImage(img, src) {
  return new Promise((resolve, reject) => {
    img.onload = () => { img.hidden = false; resolve(); };
    img.onerror = () => reject(new ApiError(`Could not load ${src}`));
    img.src = src;
  });
}

// Show an image in its panel, or a note there instead of a broken image; resolves to what failed
// (null when it showed), so one missing picture never keeps the others from showing.
async function showImage(img, src, what) {
  const slot = img.closest(".slot");
  if (slot) slot.dataset.empty = "loading…";
  try {
    await loadImage(img, src);
    return null;
  } catch (_) {
    img.hidden = true;
    img.removeAttribute("src");
    if (slot) slot.dataset.empty = `the ${what} could not be shown`;
    return what;
  }
}

// ---------- segment page ----------

// A tile mostly outside the field (black, e.g. beyond an orthomosaic's edge) is data, not a
// broken image: say so on it.
function outOfField(image) {
  const black = image.black_fraction;
  if (black === null || black === undefined || black < 0.05) return null;
  return black >= 0.99
    ? { short: "no field: all black", long: "Outside the field: every pixel is black (no data)" }
    : { short: `${Math.round(100 * black)} % out of field`, long: "Black pixels are outside the field (no data)" };
}

function thumbButton(image, container) {
  const button = element("button", {
    type: "button",
    title: image.filename || image.id.slice(0, 12),
    "data-id": image.id,
    onclick: () => { hideAlert(); select(image); },
  }, element("img", { src: image.links.thumbnail, alt: image.filename || "image", loading: "lazy" }));
  if (image.has_label) button.append(element("span", { class: "tag", text: "label" }));
  if (image.credit) button.title = `${image.filename} · ${image.credit}`;
  const outside = outOfField(image);
  if (outside) button.append(element("span", { class: "tag out-of-field", text: outside.short, title: outside.long }));
  if (state.selected && state.selected.id === image.id) button.classList.add("selected");
  container.append(button);
}

// Nine generated tiles at random, and the few real photos (those with a credit) apart.
async function loadGallery() {
  const gallery = $("gallery"), real = $("gallery-real");
  gallery.replaceChildren(element("span", { class: "empty", text: "Loading samples…" }));
  try {
    const { items } = await json("/api/v1/images/sample?limit=50&source=sample");
    const generated = items.filter((image) => !image.credit).slice(0, 9);
    const photos = items.filter((image) => image.credit);
    gallery.replaceChildren();
    if (!generated.length) gallery.append(element("span", { class: "empty", text: "No samples stored." }));
    generated.forEach((image) => thumbButton(image, gallery));
    real.replaceChildren();
    if (!photos.length) real.append(element("span", { class: "empty", text: "No real photos stored." }));
    photos.sort((a, b) => (a.filename || "").localeCompare(b.filename || "")).forEach((image) => thumbButton(image, real));
  } catch (e) {
    gallery.replaceChildren(element("span", { class: "empty", text: e.message }));
  }
}

async function loadUploads() {
  const uploads = $("uploads");
  try {
    const { items } = await json("/api/v1/images?source=upload&limit=8");
    uploads.replaceChildren();
    if (!items.length) uploads.append(element("span", { class: "empty", text: "Nothing uploaded yet." }));
    items.forEach((image) => thumbButton(image, uploads));
  } catch (e) {
    uploads.replaceChildren(element("span", { class: "empty", text: e.message }));
  }
}

function markSelected() {
  document.querySelectorAll(".grid button").forEach((button) => {
    button.classList.toggle("selected", state.selected && button.dataset.id === state.selected.id);
  });
}

function clearSegmentation() {
  $("stats").hidden = true;
  $("explain").hidden = true;
  $("result-warning").hidden = true;
  for (const name of ["mask", "overlay"]) {
    $(`view-${name}`).hidden = true;
    $(`view-${name}`).removeAttribute("src");
    $(`slot-${name}`).dataset.empty = "not segmented yet";
  }
}

async function select(image) {
  state.selected = image;
  markSelected();
  $("result-empty").hidden = true;
  $("result").hidden = false;
  $("segment-button").disabled = false;
  $("image-caption").textContent =
    `${image.filename || "image"} · ${image.width}×${image.height} px · ${image.format} · id ${image.id.slice(0, 12)}…`;
  $("image-credit").textContent = image.credit ? `Photo: ${image.credit}` : "";
  $("image-credit").hidden = !image.credit;
  $("label-replace-text").textContent = image.has_label ? "Replace ground truth" : "Add ground truth";
  // Uploads are the user's own; a sample's exact label and the sample itself serve everyone.
  $("label-action").hidden = image.source !== "upload";
  $("delete-button").hidden = image.source !== "upload";
  clearSegmentation();
  $("view-original").hidden = true;
  $("figure-label").hidden = !image.has_label;
  $("layout-select").value = image.layout;
  // On a phone the result sits below the picker: bring it into view.
  if (window.matchMedia("(max-width: 800px)").matches) $("result-title").scrollIntoView({ behavior: "smooth" });
  const failed = await Promise.all([
    showImage($("view-original"), image.links.picture, "original picture"),
    image.has_label ? showImage($("view-label"), `${image.links.label}?v=${Date.now()}`, "ground truth") : null,
  ]);
  if (state.selected !== image) return;  // another image was picked meanwhile
  try {
    const { items } = await json(`/api/v1/images/${image.id}/segmentations`);
    if (items.length && state.selected === image) failed.push(...await showSegmentation(items[0]));
  } catch (e) {
    failed.push(`earlier segmentation (${e.message})`);
  }
  const missing = failed.filter(Boolean);
  if (missing.length) showAlert(`Could not show the ${missing.join(", the ")} of ${image.filename || "this image"}.`);
}

// Stats, legend, warnings and downloads of a segmentation; returns what could not be shown.
async function showSegmentation(segmentation) {
  const stamp = encodeURIComponent(segmentation.created_at);
  const failed = await Promise.all([
    showImage($("view-mask"), `${segmentation.links.mask}&t=${stamp}`, "predicted mask"),
    showImage($("view-overlay"), `${segmentation.links.overlay}&t=${stamp}`, "overlay"),
  ]);
  const warnings = segmentation.warnings || [];
  $("result-warning").textContent = warnings.join(" ");
  $("result-warning").hidden = !warnings.length;
  $("legend-swatch").style.background = segmentation.overlay_colour;
  const stem = (state.selected.filename || state.selected.id.slice(0, 12)).replace(/\.[^.]*$/, "");
  for (const [id, href, name] of [
    ["download-mask", segmentation.links.mask, `${stem}-mask.png`],
    ["download-mask-tiff", `${segmentation.links.mask}&format=geotiff`, `${stem}-mask.tif`],
    ["download-overlay", segmentation.links.overlay, `${stem}-overlay.png`],
  ]) {
    $(id).href = href;
    $(id).download = name;
  }
  $("explain").hidden = false;
  $("stat-fraction").textContent = percent(segmentation.vegetation_fraction);
  $("stat-model").textContent = `${segmentation.model_name} ${segmentation.model_version}`;
  $("stat-latency").textContent = `${Math.round(segmentation.latency_ms)} ms`;
  const scale = segmentation.working_scale < 1 ? ` at ${Math.round(segmentation.working_scale * 100)} % size` : "";
  $("stat-layout").textContent = `${segmentation.layout}${scale}`;
  $("stats").hidden = false;
  const labelled = state.selected && state.selected.has_label;
  $("stat-accuracy-box").hidden = !labelled;
  $("stat-iou-box").hidden = !labelled;
  $("explain-scores").hidden = !labelled;
  $("stats").classList.toggle("scored", labelled);
  if (labelled) {
    try {
      const evaluation = await json(segmentation.links.evaluation);
      $("stat-accuracy").textContent = percent(evaluation.pixel_accuracy);
      $("stat-iou").textContent = evaluation.iou.toFixed(3);
    } catch (e) {
      failed.push(`scores (${e.message})`);
    }
  }
  return failed.filter(Boolean);
}

async function segmentSelected() {
  if (!state.selected) return;
  $("segment-button").disabled = true;
  hideAlert();
  busy("Segmenting… large images take a few seconds.");
  try {
    const segmentation = await json(`/api/v1/images/${state.selected.id}/segmentation`, { method: "POST" });
    busy("Loading the mask…");
    const failed = await showSegmentation(segmentation);
    if (failed.length) showAlert(`Segmented, but could not show the ${failed.join(", the ")}.`);
  } catch (e) {
    showAlert(`Segmentation failed: ${e.message}`);
  } finally {
    busy(null);
    $("segment-button").disabled = false;
  }
}

async function upload(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const label = $("label-input").files[0];
  if (label) form.append("label", label, label.name);
  form.append("layout", $("layout-input").value);
  busy(`Uploading ${file.name}…`);
  $("result-empty").hidden = true;
  $("result").hidden = false;
  try {
    const response = await api("/api/v1/images", { method: "POST", body: form });
    const image = await response.json();
    hideAlert();
    $("label-input").value = "";
    await loadUploads();
    await select(image);
    if ($("alert").hidden) {
      showAlert(response.status === 201 ? `Stored ${file.name}.` : `${file.name} was already stored: showing it.`, "info");
    }
  } catch (e) {
    showAlert(`Upload failed: ${e.message}`);
  } finally {
    busy(null);
    $("file-input").value = "";
  }
}

async function loadLayouts() {
  try {
    state.layouts = await json("/api/v1/layouts");
  } catch (e) {
    showAlert(`Cannot list the sensor layouts: ${e.message}`);
    return;
  }
  for (const id of ["layout-input", "layout-select", "field-layout"]) {
    const select = $(id);
    select.replaceChildren(...state.layouts.map((layout) =>
      element("option", { value: layout.name, text: `${layout.name} — ${layout.description.split(":")[0]}`, title: layout.description })));
  }
  if (state.selected) $("layout-select").value = state.selected.layout;
}

async function changeLayout() {
  const image = state.selected;
  const layout = $("layout-select").value;
  if (!image || layout === image.layout) return;
  busy(`Reading the image as ${layout}…`);
  try {
    const updated = await json(`/api/v1/images/${image.id}/layout`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ layout }),
    });
    hideAlert();
    await loadUploads();
    await select(updated);
    if ($("alert").hidden) showAlert(`Layout set to ${layout}. Press Segment to segment it in this layout.`, "info");
  } catch (e) {
    $("layout-select").value = image.layout;
    showAlert(`Layout not changed: ${e.message}`);
  } finally {
    busy(null);
  }
}

// Add or replace the ground truth of the selected image, then score its segmentation against it.
async function putLabel(file) {
  const image = state.selected;
  if (!file || !image) return;
  busy(`Saving ${file.name} as the ground truth…`);
  try {
    await api(`/api/v1/images/${image.id}/label`, {
      method: "PUT", headers: { "Content-Type": file.type || "image/png" }, body: file,
    });
    const updated = await json(image.links.metadata);
    hideAlert();
    await Promise.all([loadUploads(), select(updated)]);
    if ($("alert").hidden) showAlert(`Ground truth of ${image.filename || "the image"} saved from ${file.name}.`, "info");
  } catch (e) {
    showAlert(`Ground truth not saved: ${e.message}`);
  } finally {
    busy(null);
    $("label-replace").value = "";
  }
}

async function deleteSelected() {
  const image = state.selected;
  const name = image.filename || `image ${image.id.slice(0, 12)}`;
  if (!confirm(`Delete ${name} with its label, masks and overlays? This cannot be undone.`)) return;
  try {
    await api(`/api/v1/images/${image.id}`, { method: "DELETE" });
    state.selected = null;
    $("result").hidden = true;
    $("result-empty").hidden = false;
    $("segment-button").disabled = true;
    await loadUploads();
    showAlert(`Deleted ${name}.`, "info");
  } catch (e) {
    showAlert(`Not deleted: ${e.message}`);
  }
}

// A drop zone and its file input: a file chosen or dropped goes to onFile.
function setUpDropzone(zoneId, inputId, onFile) {
  const zone = $(zoneId);
  $(inputId).addEventListener("change", (event) => onFile(event.target.files[0]));
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    onFile(event.dataTransfer.files[0]);
  });
}

// ---------- drift page ----------

// A p-value as a short number that never wraps mid-number (the drift monitor's format_p_value).
function pValue(value) {
  if (typeof value !== "number") return "–";
  if (value >= 0.001) return value.toFixed(3);
  return value > 0 ? value.toExponential(1) : "<1e-300";
}

async function loadDrift() {
  const list = $("drift-list");
  list.replaceChildren(element("li", { class: "muted", text: "Loading reports…" }));
  try {
    const { items } = await json("/api/v1/drift/reports?limit=30");
    list.replaceChildren();
    if (!items.length) list.append(element("li", { class: "muted", text: "No drift report yet: the drift job has not run." }));
    items.forEach((report) => list.append(element("li", { "data-id": report.id },
      element("button", { type: "button", onclick: () => showReport(report.id) },
        element("span", { class: `badge ${report.status}`, text: report.status.replace("_", " ") }), " ",
        element("span", { text: when(report.created_at) }),
        element("div", { class: "muted", text: `${report.images ?? "?"} images · ${report.predictions ?? "?"} predictions` })))));
    if (items.length) showReport(items[0].id);
  } catch (e) {
    list.replaceChildren(element("li", { class: "muted", text: e.message }));
  }
}

// "Run now": start a drift run, follow it, then show its report.
async function runDrift() {
  const button = $("drift-run"), note = $("drift-run-state");
  button.disabled = true;
  note.textContent = "Starting a drift run…";
  try {
    let run = await json("/api/v1/drift/runs", { method: "POST" });
    while (run.status === "pending" || run.status === "running") {
      note.textContent = "Drift run in progress…";
      await new Promise((resolve) => setTimeout(resolve, 1500));
      run = await json(`/api/v1/drift/runs/${encodeURIComponent(run.id)}`);
    }
    const outcomes = { drift: "drift found", no_drift: "no drift", insufficient_data: "not enough images yet" };
    note.textContent = run.status === "succeeded"
      ? `Finished: ${outcomes[run.outcome] || run.outcome}; the report is below.`
      : `The run failed: ${run.message || "see the drift monitor's log"}`;
    await loadDrift();
  } catch (e) {
    note.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

// The reference a layout's runs compare with: this report's images, or the training images again.
function referenceButtons(report) {
  if (!report.window || !report.images) return null;
  const layout = encodeURIComponent(report.window.layout);
  const note = element("span", { class: "muted", "aria-live": "polite" });
  const change = async (options, done) => {
    try {
      const state = await json(`/api/v1/drift/reference/${layout}`, options);
      note.textContent = `${done} ${report.window.layout} runs now compare with ${state.description}.`;
    } catch (e) {
      note.textContent = e.message;
    }
  };
  const use = element("button", { type: "button", class: "link", id: "drift-use-reference",
    text: "Use these images as the reference",
    onclick: () => change({ method: "PUT", headers: { "content-type": "application/json" },
      body: JSON.stringify({ report_id: report.id }) }, "Done:") });
  const back = report.reference && report.reference.kind === "chosen"
    ? element("button", { type: "button", class: "link", id: "drift-reset-reference",
      text: "Compare with the training images again", onclick: () => change({ method: "DELETE" }, "Done:") })
    : null;
  return element("p", {}, use, back ? " · " : "", back, " ", note);
}

async function showReport(id) {
  document.querySelectorAll("#drift-list li").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
  const detail = $("drift-detail");
  detail.replaceChildren(element("div", { class: "busy" }, element("span", { class: "spinner" }), "Loading the report…"));
  try {
    const report = await json(`/api/v1/drift/reports/${encodeURIComponent(id)}`);
    $("drift-title").textContent = `Report ${when(report.created_at)}`;
    // Each check is shaped as Alibi Detect shapes results: {meta: {...}, data: {is_drift, p_val, ...}}.
    const rows = Object.entries(report.detectors || {}).map(([name, { meta, data }]) => element("tr", {},
      element("td", { text: meta.label || name.replaceAll("_", " ") }),
      element("td", {}, element("span", { class: `badge ${data.status}`, text: data.status.replace("_", " ") })),
      element("td", { class: "number", text: pValue(data.p_val) }),
      element("td", { class: "wrap", text: (data.drifted || []).map((f) => f.replaceAll("_", " ")).join(", ")
        || data.reason || "–" })));
    const plots = (report.plots || []).map((plot) => element("figure", {},
      element("img", { src: plot.url, alt: plot.name, loading: "lazy" }), element("figcaption", { text: plot.name })));
    detail.replaceChildren(...[  // a part a report lacks is null: left out (replaceChildren would write "null")
      element("p", {}, element("span", { class: `badge ${report.status}`, text: report.status.replace("_", " ") }),
        " ", report.summary || ""),
      report.performance && report.performance.text ? element("p", { text: report.performance.text }) : null,
      report.reference && report.reference.text
        ? element("p", { class: "muted", text: `Compared with ${report.reference.text}.` }) : null,
      referenceButtons(report),
      rows.length ? element("table", {}, element("thead", {}, element("tr", {},
        element("th", { text: "Check" }), element("th", { text: "Verdict" }), element("th", { text: "p-value" }),
        element("th", { text: "Drifted features" }))), element("tbody", {}, ...rows)) : null,
      plots.length ? element("div", { class: "plots" }, ...plots) : null,
      report.links && report.links.html
        ? element("p", {}, element("a", { class: "button-link", href: report.links.html, target: "_blank", rel: "noopener", text: "Open the full HTML report ↗" }))
        : null,
    ].filter(Boolean));
  } catch (e) {
    detail.replaceChildren(element("p", { class: "muted", text: e.message }));
  }
}

// ---------- status page ----------

// "27 Nov" (or "Nov 27", as the browser's language writes it) for a UTC day "2026-11-27".
const dayLabel = (date) => new Date(`${date}T00:00:00Z`).toLocaleDateString(undefined, { day: "numeric", month: "short", timeZone: "UTC" });

// One day's bar with its date under it. Beyond 7 days every few bars are dated (today always),
// each date ending under its bar and reaching left over the undated ones ("bars sparse"), so that
// the dates stay readable on a phone.
function bar(day, index, days) {
  const level = day.uptime === null ? "" : day.uptime >= 0.999 ? "good" : day.uptime >= 0.9 ? "partial" : "bad";
  const text = day.uptime === null ? "no data" : percent(day.uptime);
  const every = Math.ceil(days.length / 7);
  const dated = (days.length - 1 - index) % every === 0 && index >= every - 1;
  return element("div", { class: "day" },
    element("span", { class: level, title: `${day.date}: ${text}`, "aria-label": `${day.date}: ${text}` }),
    element("small", { text: dated ? dayLabel(day.date) : "" }));
}

// The oldest check of any service: how far back the status page can speak.
const measuredSince = (services) => services.map((s) => s.measured_since).filter(Boolean).sort()[0];

async function loadStatus() {
  try {
    const status = await json("/api/v1/status");
    const words = { up: "All systems operational", down: "Some services are down", unknown: "Not checked yet" };
    $("status-overall").textContent = words[status.overall];
    $("status-overall").className = `overall ${status.overall}`;
    $("status-services").replaceChildren(...status.services.map((service) => element("div", { class: "service", "data-service": service.name },
      element("div", { class: "service-head" },
        element("strong", { text: service.name }),
        element("span", { class: `badge ${service.state}`, text: service.state })),
      element("div", { class: "muted", text:
        `${service.detail}${service.latency_ms !== null ? ` · ${Math.round(service.latency_ms)} ms` : ""}` +
        `${service.checked_at ? ` · checked ${when(service.checked_at)}` : ""}` +
        `${service.uptime !== null ? ` · uptime ${percent(service.uptime)} over the last ${since(service.measured_since)} (${service.checks} checks${service.missed ? `, ${service.missed} missed while the stack was not running` : ""})` : ""}` }),
      element("div", { class: service.days.length > 7 ? "bars sparse" : "bars", "aria-label": "uptime per day" }, ...service.days.map(bar)))));
    const incidents = status.incidents.slice(0, 20);
    $("status-incidents").replaceChildren(...(incidents.length ? incidents.map((incident) => element("li", {},
      element("span", { class: `badge ${incident.ended_at ? "unknown" : "down"}`, text: incident.ended_at ? "resolved" : "ongoing" }),
      " ", element("strong", { text: incident.service }), " ",
      element("span", { text: `${when(incident.started_at)}${incident.ended_at ? ` – ${when(incident.ended_at)}` : ""}` }),
      element("div", { class: "muted", text: `${incident.detail} (${incident.checks_failed} failed checks)` })))
      : [element("li", { class: "muted", text: measuredSince(status.services)
        ? `No incidents in the last ${since(measuredSince(status.services))}.` : "No checks yet." })]));
  } catch (e) {
    $("status-overall").textContent = e.message;
    $("status-overall").className = "overall down";
  }
}

// ---------- routing, token ----------

const loaders = { segment: () => {}, fields: showFieldsPage, drift: loadDrift, status: loadStatus };

function route() {
  hideAlert();  // a message belongs to the page it was shown on
  const [page, ...rest] = (location.hash.replace(/^#\//, "") || "segment").split("/");
  const known = page in loaders ? page : "segment";
  for (const name of Object.keys(loaders)) $(`page-${name}`).hidden = name !== known;
  document.querySelectorAll("nav a").forEach((link) => link.classList.toggle("active", link.dataset.page === known));
  loaders[known](rest.join("/"));  // #/fields/<id>: the field on view
}

function setUpToken() {
  $("token-button").addEventListener("click", () => {
    $("token-input").value = localStorage.getItem(TOKEN_KEY) || "";
    $("token-dialog").showModal();
  });
  $("token-dialog").addEventListener("close", () => {
    if ($("token-dialog").returnValue === "save") {
      const token = $("token-input").value.trim();
      if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
    }
  });
}

// The service's settings the page follows (token needed, the fields' basemap); {} if unreachable
// (the gallery shows that error).
const serviceInfo = json("/api/v1/info").catch(() => ({}));

async function start() {
  setUpDropzone("dropzone", "file-input", upload);
  setUpToken();
  setUpFields();
  $("shuffle").addEventListener("click", loadGallery);
  $("segment-button").addEventListener("click", segmentSelected);
  $("layout-select").addEventListener("change", changeLayout);
  $("label-replace").addEventListener("change", (event) => putLabel(event.target.files[0]));
  $("delete-button").addEventListener("click", deleteSelected);
  loadLayouts();
  $("drift-refresh").addEventListener("click", loadDrift);
  $("drift-run").addEventListener("click", runDrift);
  $("status-refresh").addEventListener("click", loadStatus);
  window.addEventListener("hashchange", route);
  route();
  loadGallery();
  loadUploads();
  $("token-button").hidden = !(await serviceInfo).authentication;
}

start();
