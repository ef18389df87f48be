// Fields page: a GeoTIFF orthomosaic uploaded with tus (resumable), segmented in the background by
// the field worker, then shown on a Leaflet map with its cover cells, zones and exports.
// Loaded before app.js, whose helpers ($, element, json, api, showAlert, TOKEN_KEY) it calls.
"use strict";

const FIELDS_API = "/api/v1/fields";
const FIELD_UPLOADS = `${FIELDS_API}/uploads`;
const CHUNK_BYTES = 32 * 1024 * 1024;  // the server's default X-Max-Chunk-Size: one PATCH each
const RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000];
const ACTIVE_JOB = ["queued", "segmenting"];
const SVG = "http://www.w3.org/2000/svg";
const EXPORTS = [
  ["mask.tif", "mask (COG GeoTIFF)"],
  ["cover.geojson", "cells (GeoJSON)"],
  ["cover.csv", "cells (CSV)"],
  ["cover.gpkg", "cells (GeoPackage)"],
  ["report.json", "report (JSON)"],
];
// Red (least cover) through yellow to green (most): ColorBrewer's RdYlGn, sampled per zone.
const ZONE_STOPS = [[215, 48, 39], [252, 141, 89], [254, 224, 139], [145, 207, 96], [26, 152, 80]];

const fieldState = {
  limits: null,      // {maxBytes, maxChunk} from OPTIONS
  upload: null,      // the tus.Upload in progress
  current: null,     // the id of the field on view
  shownResults: null,  // "<id> <job finished>" of the results drawn
  formFor: null,     // the field whose settings the form shows
  wasActive: false,  // whether the field on view had a job under way at the last look
  map: null,
  poll: null,
  listPoll: null,
};

// ---------- formatting ----------

// Binary units, as the server's messages count them.
function bytes(count) {
  if (count >= 2 ** 30) return `${(count / 2 ** 30).toFixed(2)} GiB`;
  if (count >= 2 ** 20) return `${(count / 2 ** 20).toFixed(1)} MiB`;
  return `${Math.max(0, Math.round(count / 2 ** 10))} KiB`;
}

// Hectares from 1 ha on (or always, with inHectares: a table's column keeps one unit).
const area = (m2, inHectares = m2 >= 10000) => (inHectares ? `${(m2 / 10000).toFixed(2)} ha` : `${Math.round(m2)} m²`);
const coverText = (fraction) => `${(100 * fraction).toFixed(1)} %`;

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function zoneColour(zone, count) {
  if (!zone) return "#9e9e9e";
  const t = count > 1 ? (zone - 1) / (count - 1) : 1;
  const position = t * (ZONE_STOPS.length - 1), index = Math.min(Math.floor(position), ZONE_STOPS.length - 2);
  const f = position - index, [a, b] = [ZONE_STOPS[index], ZONE_STOPS[index + 1]];
  return `rgb(${a.map((value, i) => Math.round(value + f * (b[i] - value))).join(",")})`;
}

// ---------- upload ----------

// The server's limits (tus discovery); null where it does not say.
async function uploadLimits() {
  if (fieldState.limits) return fieldState.limits;
  try {
    const response = await fetch(FIELD_UPLOADS, { method: "OPTIONS", headers: { "Tus-Resumable": "1.0.0" } });
    const number = (name) => Number(response.headers.get(name)) || null;
    fieldState.limits = { maxBytes: number("Tus-Max-Size"), maxChunk: number("X-Max-Chunk-Size") };
    if (fieldState.limits.maxBytes) $("field-max-size").textContent = bytes(fieldState.limits.maxBytes);
  } catch (_) {
    return { maxBytes: null, maxChunk: null };  // the server checks again; an unreachable one says so
  }
  return fieldState.limits;
}

// What is wrong with the file before a byte is sent, or null.
function fileProblem(file, limits) {
  if (!/\.tiff?$/i.test(file.name)) {
    return `${file.name} is not a GeoTIFF: choose a .tif or .tiff file (export the orthomosaic as GeoTIFF).`;
  }
  if (file.size === 0) return `${file.name} is empty.`;
  if (limits.maxBytes && file.size > limits.maxBytes) {
    return `${file.name} is ${bytes(file.size)}; this server takes files up to ${bytes(limits.maxBytes)}.`;
  }
  return null;
}

// The message of the server's JSON error body, else the status line.
function responseMessage(response) {
  const status = response.getStatus();
  try {
    const error = JSON.parse(response.getBody()).error;
    const message = typeof error === "string" ? error : error && error.message;
    if (message) return `${message} (HTTP ${status})`;
  } catch (_) { /* not JSON */ }
  return `the server answered HTTP ${status}`;
}

function showUploadProgress(sent, total, note = "") {
  const share = total ? (100 * sent) / total : 0;
  $("field-upload-bar").value = share;
  $("field-upload-text").textContent = `${bytes(sent)} of ${bytes(total)} · ${share.toFixed(1)} %${note}`;
}

function endUpload(text) {
  fieldState.upload = null;
  $("field-upload-cancel").hidden = true;
  $("field-upload-text").textContent = text;
  $("field-file").value = "";
  $("field-file").disabled = false;
}

async function uploadField(file) {
  if (!file) return;
  if (fieldState.upload) {
    showAlert("An upload is under way: wait for it to finish or cancel it first.");
    return;
  }
  hideAlert();
  const limits = await uploadLimits();
  const problem = fileProblem(file, limits);
  if (problem) {
    showAlert(problem);
    $("field-file").value = "";
    return;
  }
  const name = $("field-name").value.trim();
  let accepted = 0;
  const upload = new tus.Upload(file, {
    endpoint: FIELD_UPLOADS,
    chunkSize: Math.min(CHUNK_BYTES, limits.maxChunk || CHUNK_BYTES),
    metadata: { filename: file.name, layout: $("field-layout").value, ...(name ? { name } : {}) },
    retryDelays: RETRY_DELAYS,
    removeFingerprintOnSuccess: true,
    onBeforeRequest: (request) => {
      const token = localStorage.getItem(TOKEN_KEY);
      if (token) request.setHeader("Authorization", `Bearer ${token}`);
    },
    onProgress: (sent, total) => showUploadProgress(sent, total),
    onChunkComplete: (_, done) => { accepted = done; },
    onSuccess: () => uploaded(upload, file),
    onError: (error) => {
      const response = error.originalResponse;
      if (response && [401, 403].includes(response.getStatus())) $("token-button").hidden = false;
      const why = response
        ? responseMessage(response)
        : `the connection to the server failed after ${RETRY_DELAYS.length} tries. Choose the same file again to resume` +
          (accepted ? ` from ${bytes(accepted)}` : "");
      if (response) $("field-upload-bar").value = 0;  // refused: the server deleted what arrived
      endUpload(`Not uploaded: ${why}`);
      showAlert(`${file.name} was not uploaded: ${why}`);
    },
  });
  fieldState.upload = upload;
  $("field-upload").hidden = false;
  $("field-upload-name").textContent = file.name;
  $("field-upload-cancel").hidden = false;
  $("field-file").disabled = true;
  showUploadProgress(0, file.size);
  // An upload of this same file that was cut off: go on from where the server has it.
  const previous = await upload.findPreviousUploads();
  if (previous.length) {
    previous.sort((a, b) => new Date(b.creationTime) - new Date(a.creationTime));
    upload.resumeFromPreviousUpload(previous[0]);
    $("field-upload-text").textContent = "Resuming an earlier upload of this file…";
  }
  upload.start();
}

async function uploaded(upload, file) {
  const id = upload.url.split("/").pop();
  endUpload(`Uploaded ${bytes(file.size)}: stored as a field.`);
  $("field-upload-bar").value = 100;
  $("field-name").value = "";
  if ($("field-autostart").checked) await segmentField(id);
  await loadFieldList();
  location.hash = `#/fields/${id}`;
}

async function cancelUpload() {
  const upload = fieldState.upload;
  if (!upload) return;
  $("field-upload-cancel").hidden = true;
  try {
    await upload.abort(true);  // also deletes what the server received, and forgets the upload
    endUpload("Upload cancelled: nothing was kept.");
  } catch (e) {
    endUpload(`Upload stopped; the server could not be told (${e.message}): it deletes the part within a day.`);
  }
}

// ---------- the list ----------

function jobBadge(field) {
  const job = field.job;
  const status = job ? job.status : "uploaded";
  const kinds = { done: "ok", failed: "error", cancelled: "unknown", queued: "unknown", segmenting: "unknown" };
  return element("span", { class: `badge ${kinds[status] || ""}`, text: status });
}

function fieldItem(field) {
  const job = field.job;
  const active = job && ACTIVE_JOB.includes(job.status);
  const facts = `${field.width.toLocaleString()} × ${field.height.toLocaleString()} px · ${bytes(field.size)}` +
    (active && job.status === "segmenting" ? ` · ${job.percent.toFixed(0)} %` : "");
  return element("li", { "data-id": field.id, class: field.id === fieldState.current ? "selected" : "" },
    element("button", { type: "button", onclick: () => { location.hash = `#/fields/${field.id}`; } },
      element("strong", { text: field.name }), " ", jobBadge(field),
      element("div", { class: "muted", text: facts })));
}

async function loadFieldList() {
  clearTimeout(fieldState.listPoll);
  const list = $("fields-list");
  try {
    const { items } = await json(FIELDS_API);
    list.replaceChildren(...(items.length ? items.map(fieldItem)
      : [element("li", { class: "muted", text: "No field yet: upload a GeoTIFF." })]));
    if (items.some((field) => field.job && ACTIVE_JOB.includes(field.job.status))) {
      fieldState.listPoll = setTimeout(() => { if (!$("page-fields").hidden) loadFieldList(); }, 3000);
    }
  } catch (e) {
    list.replaceChildren(element("li", { class: "muted", text: e.message }));
  }
}

// ---------- one field ----------

function coverRequest() {
  const size = $("cell-size").value;
  return {
    cell_m: Number(size === "other" ? $("cell-size-other").value : size),
    zones: Number($("zone-count").value),
    zone_method: $("zone-method").value,
  };
}

function showCoverRequest(cover) {
  const preset = ["5", "10", "20"].find((value) => Number(value) === cover.cell_m);
  $("cell-size").value = preset || "other";
  $("cell-size-other").value = cover.cell_m;
  $("cell-size-other-label").hidden = Boolean(preset);
  $("zone-count").value = cover.zones;
  $("zone-method").value = cover.zone_method;
}

async function segmentField(id, cover = coverRequest()) {
  try {
    await json(`${FIELDS_API}/${id}/segment`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(cover),
    });
    return true;
  } catch (e) {
    showAlert(`Not segmented: ${e.message}`);
    return false;
  }
}

async function openField(id) {
  clearTimeout(fieldState.poll);
  if (fieldState.current !== id) {
    fieldState.current = id;
    fieldState.shownResults = null;
    $("field-results").hidden = true;
    document.querySelectorAll("#fields-list li").forEach((li) => li.classList.toggle("selected", li.dataset.id === id));
  }
  $("field-empty").hidden = true;
  $("field-view").hidden = false;
  let field;
  try {
    field = await json(`${FIELDS_API}/${id}`);
  } catch (e) {
    $("field-title").textContent = "Field";
    $("field-view").hidden = true;
    $("field-empty").hidden = false;
    $("field-empty").textContent = e.message;
    $("field-delete").hidden = true;
    return;
  }
  if (fieldState.current !== id) return;  // another field was opened meanwhile
  await showField(field);
}

async function showField(field) {
  $("field-title").textContent = field.name;
  $("field-delete").hidden = false;
  const pixel = field.pixel_size ? ` · ${(100 * field.pixel_size[0]).toPrecision(3)} cm pixels` : "";
  $("field-caption").textContent = `${field.filename} · ${field.width.toLocaleString()} × ${field.height.toLocaleString()} px · ` +
    `${field.bands} bands · ${field.crs || "CRS without EPSG code"}${pixel} · ${bytes(field.size)} · uploaded ${when(field.created)}`;
  const job = field.job;
  if (fieldState.formFor !== field.id) {
    fieldState.formFor = field.id;
    if (job) showCoverRequest(job.cover);
  }
  showJob(job);
  const active = job && ACTIVE_JOB.includes(job.status);
  $("field-segment").disabled = Boolean(active);
  $("field-segment").textContent = job ? "Segment again" : "Segment";
  if (active) {
    fieldState.poll = setTimeout(() => { if (!$("page-fields").hidden) openField(field.id); }, 1000);
  } else if (fieldState.wasActive) {
    loadFieldList();  // the list's badge catches up with the end of the job
  }
  fieldState.wasActive = Boolean(active);
  if (job && job.status === "done") {
    const key = `${field.id} ${job.finished}`;
    if (fieldState.shownResults !== key) {
      fieldState.shownResults = key;
      await showResults(field);
    }
  }
}

function showJob(job) {
  $("job").hidden = !job;
  if (!job) return;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `badge ${{ done: "ok", failed: "error" }[job.status] || "unknown"}`;
  $("job-bar").value = job.percent;
  $("job-cancel").hidden = !ACTIVE_JOB.includes(job.status);
  const parts = [];
  if (job.status === "queued") parts.push("waiting for a worker…");
  if (job.status === "segmenting") {
    parts.push(`${job.percent.toFixed(1)} %`);
    if (job.windows_total) parts.push(`${job.windows_done} of ${job.windows_total} windows`);
    if (job.seconds_left !== null && job.seconds_left !== undefined) parts.push(`${duration(job.seconds_left)} left`);
    if (job.megapixels_per_s) parts.push(`${job.megapixels_per_s.toFixed(1)} MP/s`);
    if (job.resumed_from) parts.push(`resumed after ${job.resumed_from} windows`);
  }
  if (job.status === "cancelled") {
    parts.push(job.windows_done ? `stopped after ${job.windows_done} of ${job.windows_total} windows: Segment again goes on from there`
      : "stopped before it began");
  }
  if (job.status === "done" && job.started && job.finished) {
    parts.push(`in ${duration((new Date(job.finished) - new Date(job.started)) / 1000)}`);
    if (job.megapixels_per_s) parts.push(`${job.megapixels_per_s.toFixed(1)} MP/s`);
  }
  parts.push(`${job.cover.cell_m} m cells, ${job.cover.zones} zones (${job.cover.zone_method})`);
  $("job-text").textContent = parts.join(" · ");
  $("job-error").hidden = job.status !== "failed";
  $("job-error").textContent = job.status === "failed" ? `Failed: ${job.error || "the worker gave no reason"}` : "";
}

const resultUrl = (field, name) =>
  (field.links && field.links.results && field.links.results[name]) || `${FIELDS_API}/${field.id}/results/${name}`;

async function showResults(field) {
  let report, cells;
  try {
    [report, cells] = await Promise.all([json(resultUrl(field, "report.json")), json(resultUrl(field, "cover.geojson"))]);
  } catch (e) {
    showAlert(`The results of ${field.name} could not be read: ${e.message}`);
    return;
  }
  if (fieldState.current !== field.id) return;
  const cover = report.cover;
  const zones = cover ? cover.zones : [];
  $("field-results").hidden = false;
  const warnings = [...(report.warnings || [])];
  if (cover && zones.length < cover.zones_asked) {
    warnings.push(`The cells' cover splits into ${zones.length} zone(s), not ${cover.zones_asked}: equal values share a zone.`);
  }
  $("field-warning").textContent = warnings.join(" ");
  $("field-warning").hidden = !warnings.length;
  $("field-cover").textContent = coverText(report.vegetation_fraction);
  $("field-area").textContent = report.area_m2 !== undefined ? area(report.area_m2) : "–";
  $("field-cells").textContent = cover ? `${cover.cells.toLocaleString()} × ${cover.cell_m} m` : "–";
  $("field-zones").textContent = cover ? `${zones.length} · ${cover.zone_method}` : "–";
  drawLegend(zones, report.area_m2 >= 10000);
  drawHistogram(cells.features, zones.length);
  $("field-exports").replaceChildren("Download: ", ...EXPORTS.flatMap(([name, label], index) => [
    index ? " · " : "",
    element("a", { href: resultUrl(field, name), download: `${field.name}.${name}`, "data-result": name, text: label }),
  ]));
  drawMap(field, report, cells, zones.length, await serviceInfo);
}

function drawMap(field, report, cells, zoneCount, info) {
  if (fieldState.map) fieldState.map.remove();
  const map = L.map("field-map", { zoomSnap: 0.25, preferCanvas: cells.features.length > 5000 });
  fieldState.map = map;
  // A basemap only where one is configured (STORAGE_FIELDS__MAP_TILES): by default the map needs no network.
  const overlays = {};
  if (info.map_tiles) {
    overlays.Basemap = L.tileLayer(info.map_tiles, {
      attribution: info.map_attribution, maxZoom: 23, maxNativeZoom: 19,
    }).addTo(map);
  }
  const [west, south, east, north] = report.map_bounds;
  const bounds = L.latLngBounds([south, west], [north, east]);
  const image = L.imageOverlay(resultUrl(field, "map.png"), bounds, {
    alt: `${field.name}: the field with its vegetation tinted`,
  }).addTo(map);
  const style = (feature) => ({
    color: "#ffffff", weight: 0.6, opacity: 0.8, fillOpacity: 0.5,
    fillColor: zoneColour(feature.properties.zone, zoneCount),
  });
  const grid = L.geoJSON(cells, {
    style,
    onEachFeature: (feature, layer) => {
      const p = feature.properties;
      layer.bindTooltip(element("span", {},
        element("strong", { text: `Zone ${p.zone}` }), element("br"),
        `vegetation cover ${coverText(p.vegetation_cover)}`, element("br"),
        `${area(p.data_area_m2)} with data · cell ${p.row}, ${p.col}`), { sticky: true });
      layer.on("mouseover", () => layer.setStyle({ weight: 2.5, color: "#1d2521", fillOpacity: 0.75 }));
      layer.on("mouseout", () => grid.resetStyle(layer));
    },
  }).addTo(map);
  Object.assign(overlays, { "Field image": image, "Cover cells": grid });
  L.control.layers(null, overlays, { collapsed: window.innerWidth < 520 }).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);
  map.fitBounds(bounds);
}

function drawLegend(zones, inHectares) {
  const rows = zones.map((zone) => element("tr", { "data-zone": zone.zone },
    element("td", {}, element("span", { class: "swatch", "data-colour": zoneColour(zone.zone, zones.length) }), ` ${zone.zone}`),
    element("td", { class: "number", text: `${coverText(zone.min_cover)} – ${coverText(zone.max_cover)}`,
      title: `mean ${coverText(zone.mean_cover)}` }),
    element("td", { class: "number", text: zone.cells.toLocaleString() }),
    element("td", { class: "number", text: area(zone.area_m2, inHectares) })));
  $("field-legend").tBodies[0].replaceChildren(...rows);
  // CSSOM, not a style attribute: the page's Content-Security-Policy allows no inline styles.
  $("field-legend").querySelectorAll(".swatch").forEach((swatch) => { swatch.style.background = swatch.dataset.colour; });
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

// Cells per 5 % of cover, each bar stacked by the zones of its cells.
function drawHistogram(features, zoneCount) {
  const bins = 20, counts = Array.from({ length: bins }, () => new Map());
  for (const { properties: p } of features) {
    const bin = Math.min(bins - 1, Math.floor(p.vegetation_cover * bins));
    counts[bin].set(p.zone, (counts[bin].get(p.zone) || 0) + 1);
  }
  const totals = counts.map((bin) => [...bin.values()].reduce((a, b) => a + b, 0));
  const most = Math.max(1, ...totals);
  const [width, height, left, right, bottom, top] = [320, 150, 34, 16, 22, 8];
  const plotWidth = width - left - right, plotHeight = height - bottom - top, barWidth = plotWidth / bins;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "histogram-chart",
    "aria-label": `Histogram of the vegetation cover of ${features.length} cells, in steps of 5 %` });
  chart.append(svg("line", { x1: left, x2: width - right, y1: top + plotHeight, y2: top + plotHeight, class: "axis" }));
  for (const tick of [0, 25, 50, 75, 100]) {
    const x = left + (plotWidth * tick) / 100;
    chart.append(svg("text", { x, y: height - 6, "text-anchor": "middle", class: "tick" }, `${tick} %`));
  }
  chart.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end", class: "tick" }, most.toLocaleString()));
  chart.append(svg("text", { x: left - 4, y: top + plotHeight, "text-anchor": "end", class: "tick" }, "0"));
  counts.forEach((bin, index) => {
    let y = top + plotHeight;
    for (const zone of [...bin.keys()].sort((a, b) => a - b)) {
      const barHeight = (plotHeight * bin.get(zone)) / most;
      y -= barHeight;
      const bar = svg("rect", { x: left + index * barWidth + 0.5, y, width: barWidth - 1, height: barHeight,
        fill: zoneColour(zone, zoneCount), class: "bar" });
      bar.append(svg("title", {}, `${index * 5}–${index * 5 + 5} % cover: ${bin.get(zone)} cells of zone ${zone}`));
      chart.append(bar);
    }
  });
  $("field-histogram").replaceChildren(chart);
}

async function cancelJob() {
  const id = fieldState.current;
  $("job-cancel").disabled = true;
  try {
    await json(`${FIELDS_API}/${id}/cancel`, { method: "POST" });
  } catch (e) {
    showAlert(`Not cancelled: ${e.message}`);
  } finally {
    $("job-cancel").disabled = false;
  }
  await openField(id);
}

async function deleteField() {
  const id = fieldState.current;
  const name = $("field-title").textContent;
  if (!confirm(`Delete the field ${name} with its GeoTIFF and results? This cannot be undone.`)) return;
  try {
    await api(`${FIELDS_API}/${id}`, { method: "DELETE" });
  } catch (e) {
    showAlert(`Not deleted: ${e.message}`);
    return;
  }
  fieldState.current = null;
  location.hash = "#/fields";
  showAlert(`Deleted ${name}.`, "info");
}

// ---------- page ----------

// The loader of #/fields and #/fields/<id>.
function showFieldsPage(id) {
  uploadLimits();
  loadFieldList();
  if (id) {
    openField(id);
    if (window.matchMedia("(max-width: 800px)").matches) $("field-title").scrollIntoView();
  } else {
    clearTimeout(fieldState.poll);
    fieldState.current = null;
    $("field-view").hidden = true;
    $("field-empty").hidden = false;
    $("field-empty").textContent = "Upload a GeoTIFF or pick a field from the list.";
    $("field-title").textContent = "Field";
    $("field-delete").hidden = true;
  }
}

function setUpFields() {
  setUpDropzone("field-dropzone", "field-file", uploadField);
  $("field-upload-cancel").addEventListener("click", cancelUpload);
  $("fields-refresh").addEventListener("click", loadFieldList);
  $("cell-size").addEventListener("change", () => { $("cell-size-other-label").hidden = $("cell-size").value !== "other"; });
  $("segment-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = fieldState.current;
    if (!id) return;
    hideAlert();
    $("field-segment").disabled = true;
    await segmentField(id);
    await openField(id);
  });
  $("job-cancel").addEventListener("click", cancelJob);
  $("field-delete").addEventListener("click", deleteField);
}
