// geofast page: starts the map and, on the server page, the upload form that calls
// POST v1/locate (a URL relative to the page, so nothing leaves the server's origin).
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("gf-config").textContent);
  const outlines = JSON.parse(document.getElementById("gf-outlines").textContent);
  const V = window.GeofastView;
  window.GeoMap.configure(cfg.constants);
  V.configure(cfg.constants);
  let attribution = null;
  if (cfg.tiles) attribution = "Tiles: " + new URL(cfg.tiles.replace(/[{}]/g, "")).host;
  const map = new window.GeoMap(document.getElementById("gf-map"), { outlines: outlines, tiles: cfg.tiles, attribution: attribution });
  const panel = document.getElementById("gf-panel");
  const download = document.getElementById("gf-download");
  let downloadUrl = null;

  function offerDownload(obj, name) {
    if (downloadUrl) URL.revokeObjectURL(downloadUrl);
    downloadUrl = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 2) + "\n"], { type: "application/json" }));
    download.href = downloadUrl;
    download.download = name;
    download.hidden = false;
  }

  window.geofastMap = map;
  if (cfg.mode === "coverage") {
    new V.CoverageView(map, panel).setCoverage(cfg.coverage);
    document.body.dataset.ready = "1";
    return;
  }
  const view = new V.ResultsView(map, panel);
  window.geofastView = view;
  if (cfg.mode === "results") {
    view.setResults(cfg.results);
    offerDownload(cfg.results, "geofast-results.json");
    document.body.dataset.ready = "1";
    return;
  }

  // --- the server page -------------------------------------------------------------------
  const form = document.getElementById("gf-form");
  const input = document.getElementById("gf-files");
  const drop = document.getElementById("gf-drop");
  const status = document.getElementById("gf-status");
  const submit = document.getElementById("gf-submit");
  form.hidden = false;
  panel.textContent = "";
  V.h("p", { class: "gf-note" }, panel, "Drop photos on the page or choose them above (or type a description and press Locate): their likely locations appear on the map and here.");
  map.fitPoints([]);
  const thumbs = {};
  let pending = [];

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("gf-error", !!isError);
    status.setAttribute("role", isError ? "alert" : "status");
  }

  function setFiles(files) {
    pending = Array.from(files || []).filter((f) => f.size > 0);
    for (const f of pending) {
      if (thumbs[f.name]) URL.revokeObjectURL(thumbs[f.name]);
      thumbs[f.name] = URL.createObjectURL(f);
    }
    drop.querySelector(".gf-drop-files").textContent = pending.length
      ? pending.length === 1 ? pending[0].name : pending.length + " photos"
      : "";
    if (pending.length) locate();
  }

  async function locate() {
    const text = document.getElementById("gf-text").value.trim();
    const urls = document.getElementById("gf-urls").value.split(/\s+/).filter(Boolean);
    if (!pending.length && !text && !urls.length) {
      say("Choose or drop a photo, or type a description, first.", true);
      return;
    }
    const fd = new FormData();
    for (const f of pending) fd.append("images", f, f.name);
    fd.append("top_k", document.getElementById("gf-topk").value || "5");
    const method = document.getElementById("gf-method").value;
    if (method) fd.append("method", method);
    if (text) fd.append("text", text);
    for (const u of urls) fd.append("urls", u);
    const headers = {};
    const key = document.getElementById("gf-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    const n = pending.length + urls.length + (text ? 1 : 0);
    say("Locating " + n + (n === 1 ? " item" : " items") + "\u2026");
    submit.disabled = true;
    document.body.setAttribute("aria-busy", "true");
    const t0 = performance.now();
    try {
      const resp = await fetch("v1/locate", { method: "POST", body: fd, headers: headers });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok) {
        let msg = data && (data.error || data.detail || data.message);
        if (msg && typeof msg !== "string") msg = JSON.stringify(msg);
        if (msg && data.hint) msg += " (" + data.hint + ")";
        if (resp.status === 401 || resp.status === 403) msg = (msg || "not authorised") + " \u2014 enter the server's API key under Options.";
        say("The server answered " + resp.status + ": " + (msg || resp.statusText), true);
        return;
      }
      const results = (data && data.results) || [];
      view.setThumbnails(thumbs);
      view.setResults(results);
      offerDownload(data, "geofast-results.json");
      const bad = results.filter((r) => r.error).length;
      const ms = data.timings_ms && data.timings_ms.total !== undefined ? data.timings_ms.total : performance.now() - t0;
      say("Located " + (results.length - bad) + " of " + results.length + " in " + Math.round(ms) + " ms" + (bad ? " (" + bad + " failed: see the list)" : "") + ".", bad > 0 && bad === results.length);
      document.body.dataset.results = String(results.length);
    } catch (e) {
      say("The request failed: " + e.message, true);
    } finally {
      submit.disabled = false;
      document.body.removeAttribute("aria-busy");
    }
  }

  // What the server runs (a server that needs a key answers 401 here: then nothing is shown).
  async function serverInfo() {
    try {
      const key = document.getElementById("gf-key").value.trim();
      const resp = await fetch("v1/models", { headers: key ? { "X-API-Key": key } : {} });
      if (!resp.ok) return;
      const info = await resp.json();
      const parts = [];
      if (info.model) parts.push("model " + info.model);
      if (info.method) parts.push("method " + info.method);
      if (info.gallery && info.gallery.points) parts.push(info.gallery.points.toLocaleString("en") + " gallery points");
      if (info.device) parts.push(info.device);
      if (!info.ready) parts.push(info.loading_error ? "failed to load: " + info.loading_error.error : "loading…");
      document.getElementById("gf-server").textContent = parts.length ? "Server: " + parts.join(" · ") : "";
      const sel = document.getElementById("gf-method");
      if (info.methods && info.methods.length) {
        for (const opt of Array.from(sel.options)) if (opt.value && info.methods.indexOf(opt.value) < 0) opt.remove();
      }
      if (!info.ready && !info.loading_error) setTimeout(serverInfo, 2000);
    } catch (e) {
      /* the page still works without it */
    }
  }
  serverInfo();
  document.getElementById("gf-key").addEventListener("change", serverInfo);

  input.addEventListener("change", () => setFiles(input.files));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); locate(); });
  for (const target of [drop, document.body]) {
    target.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("gf-over"); });
    target.addEventListener("dragleave", (ev) => { if (ev.target === drop) drop.classList.remove("gf-over"); });
    target.addEventListener("drop", (ev) => {
      ev.preventDefault();
      ev.stopPropagation();
      drop.classList.remove("gf-over");
      if (ev.dataTransfer && ev.dataTransfer.files.length) setFiles(ev.dataTransfer.files);
    });
  }
  document.body.dataset.ready = "1";
})();
