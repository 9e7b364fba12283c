// geofast results view: turns `geofast locate --json` objects (or a database coverage) into
// map layers and tables. Shared by the server page and by the files of `locate --map` and
// `db info --map`. Every value from the data is inserted as text, never as HTML.
"use strict";
(function (global) {
  const COLORS = {
    top1: "#c2185b",
    top1Weak: "#ef6c00",
    candidates: "#1565c0",
    pd25: "#c2185b",
    neighbours: "#2e7d32",
    farthest: "#6a1b9a",
    llm: "#d84315",
    cell: "#00838f",
    coverage: "#1565c0",
  };
  let PD_RADIUS_KM = 25; // set from geofast.constants by the page (GeofastView.configure)
  let LOCALIZABLE = 0.2;
  const MANY = 200; // cluster a layer above this many points
  const STACK_LIST = 50; // most photos a stacked pin's popup lists (all are in the panel's list)

  function h(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  const fmt = {
    coord: (x) => (x === null || x === undefined ? "\u2013" : Number(x).toFixed(5)),
    prob: (x) => (x === null || x === undefined ? "\u2013" : Number(x).toFixed(4)),
    score: (x) => (x === null || x === undefined ? "\u2013" : Number(x).toFixed(4)),
    pct: (x) => (x === null || x === undefined ? "\u2013" : (100 * Number(x)).toFixed(1) + " %"),
  };

  function baseName(path) {
    const s = String(path || "");
    if (s.startsWith("text: ") || /^https?:\/\//.test(s)) return s; // text queries and URLs are shown whole
    const i = Math.max(s.lastIndexOf("/"), s.lastIndexOf("\\"));
    return i >= 0 ? s.slice(i + 1) : s;
  }

  function table(parent, caption, columns, rows, rowAttrs) {
    const t = h("table", { class: "gf-table" }, parent);
    h("caption", {}, t, caption);
    const tr = h("tr", {}, h("thead", {}, t));
    for (const c of columns) h("th", { scope: "col" }, tr, c);
    const body = h("tbody", {}, t);
    rows.forEach((row, i) => {
      const r = h("tr", rowAttrs ? rowAttrs(i) : {}, body);
      row.forEach((cell, j) => h(j === 0 ? "th" : "td", j === 0 ? { scope: "row" } : {}, r, cell));
    });
    return t;
  }

  class ResultsView {
    // map: a GeoMap; panel: the element beside the map that receives the tables.
    constructor(map, panel) {
      this.map = map;
      this.panel = panel;
      this.results = [];
      this.selected = 0;
      this.thumbs = {};
      map.onselect = (i) => this.select(i, false);
    }

    setThumbnails(byName) {
      this.thumbs = byName || {};
    }

    setResults(results) {
      this.results = results || [];
      const first = this.results.findIndex((r) => !r.error);
      this.selected = first < 0 ? 0 : first;
      this._layers();
      this._panel();
      this._fit();
    }

    select(i, fit) {
      if (i === this.selected || i < 0 || i >= this.results.length) return;
      this.selected = i;
      this._layers();
      this._panel();
      if (fit !== false) {
        this.map.popup.hidden = true; // it points at a place the new view may not show
        this._fit(true);
      }
    }

    // Fit the map to the selected photo's points (one photo, or after a selection), or to every top-1.
    _fit(selectedOnly) {
      const ok = this.results.filter((r) => !r.error && r.predictions && r.predictions.length);
      const r = this.results[this.selected];
      if (r && !r.error && r.predictions && r.predictions.length && (selectedOnly || ok.length === 1)) {
        const pts = r.predictions.map((p) => [p.lat, p.lon]).concat((r.neighbours || []).map((n) => [n.lat, n.lon]), (r.candidates || []).map((c) => [c.lat, c.lon]));
        this.map.fitPoints(pts, 5);
      } else {
        this.map.fitPoints(ok.map((x) => [x.predictions[0].lat, x.predictions[0].lon]), 6);
      }
    }

    // Photos whose top-1 is the same point (GeoCLIP answers with gallery points, so many photos can
    // share one) are drawn as one pin with a count badge; its popup lists each photo as a button
    // that selects it. The pin shows the selected photo when it is one of them, else the first.
    _stackTop1(top1) {
      const groups = new Map();
      for (const it of top1) {
        const key = it.lat + "," + it.lon;
        const g = groups.get(key);
        if (g) g.push(it);
        else groups.set(key, [it]);
      }
      const out = [];
      for (const g of groups.values()) {
        if (g.length === 1) { out.push(g[0]); continue; }
        const shown = g.find((it) => it.select === this.selected) || g[0];
        const p = this.results[shown.select].predictions[0];
        const lines = [g.length.toLocaleString("en") + " photos share this top-1", p.place || "(no place name)", fmt.coord(p.lat) + ", " + fmt.coord(p.lon)];
        for (const it of g.slice(0, STACK_LIST)) lines.push({ text: baseName(this.results[it.select].image), select: it.select, selected: it.select === this.selected });
        if (g.length > STACK_LIST) lines.push("\u2026 and " + (g.length - STACK_LIST).toLocaleString("en") + " more in the list of photos");
        out.push(Object.assign({}, shown, {
          count: g.length, weight: g.length, popup: lines,
          label: g.length.toLocaleString("en") + " photos: " + (p.place || fmt.coord(p.lat) + ", " + fmt.coord(p.lon)),
          data: Object.assign({}, shown.data, { stack: g.map((it) => it.select).join(" ") }),
        }));
      }
      return out;
    }

    _layers() {
      let top1 = [];
      const pd = [], cands = [], near = [], far = [], llm = [], cells = [];
      const many = this.results.length > 1;
      const pdAt = new Set();
      this.results.forEach((r, i) => {
        if (r.error || !r.predictions || !r.predictions.length) return;
        const p = r.predictions[0];
        const name = baseName(r.image);
        const weak = r.localizable === false;
        top1.push({
          lat: p.lat, lon: p.lon, shape: "pin", select: i,
          color: weak ? COLORS.top1Weak : COLORS.top1,
          label: name + ": " + (p.place || fmt.coord(p.lat) + ", " + fmt.coord(p.lon)),
          popup: [name, (p.place || "(no place name)"), fmt.coord(p.lat) + ", " + fmt.coord(p.lon),
            "probability " + fmt.prob(p.prob), "PD\u2082\u2085 confidence " + fmt.prob(r.confidence) + (r.localizable === null || r.localizable === undefined ? "" : r.localizable ? " \u2014 localizable (> " + LOCALIZABLE + ")" : " \u2014 not localizable (\u2264 " + LOCALIZABLE + ")")],
          data: { image: r.image, rank: 1, prob: p.prob, place: p.place, confidence: r.confidence, localizable: r.localizable },
        });
        // One circle per top-1 point: photos sharing a top-1 would stack identical translucent circles.
        if (r.confidence !== null && r.confidence !== undefined && !pdAt.has(p.lat + "," + p.lon)) {
          pdAt.add(p.lat + "," + p.lon);
          pd.push({ lat: p.lat, lon: p.lon, radius_km: PD_RADIUS_KM, label: name + ": PD\u2082\u2085 = " + fmt.prob(r.confidence) + " (probability within " + PD_RADIUS_KM + " km of the top-1)" });
        }
        if (i !== this.selected) return;
        // Marker area proportional to probability, relative to the most probable candidate.
        const maxProb = Math.max(1e-12, ...r.predictions.map((c) => c.prob || 0));
        r.predictions.forEach((c, k) => {
          const prob = c.prob === null || c.prob === undefined ? 0 : c.prob;
          cands.push({
            lat: c.lat, lon: c.lon, r: 6 + 10 * Math.sqrt(prob / maxProb), text: String(k + 1),
            label: "#" + (k + 1) + " " + (c.place || "") + " p=" + fmt.prob(c.prob),
            popup: ["Candidate #" + (k + 1), c.place || "(no place name)", fmt.coord(c.lat) + ", " + fmt.coord(c.lon), "probability " + fmt.prob(c.prob)],
            data: { rank: k + 1, prob: c.prob, place: c.place },
          });
        });
        for (const [list, out, what] of [[r.neighbours, near, "nearest"], [r.farthest, far, "farthest"]]) {
          (list || []).forEach((n, k) => out.push({
            lat: n.lat, lon: n.lon, r: 5, shape: "square",
            label: what + " #" + (k + 1) + ": " + baseName(n.image || "row " + n.id) + " (similarity " + fmt.score(n.similarity) + ")",
            popup: ["Database photo, " + what + " #" + (k + 1), String(n.image || "row " + n.id), fmt.coord(n.lat) + ", " + fmt.coord(n.lon), "similarity " + fmt.score(n.similarity)],
            data: { id: n.id, similarity: n.similarity },
          }));
        }
        (r.candidates || []).forEach((c, k) => llm.push({
          lat: c.lat, lon: c.lon, r: 6, shape: "diamond",
          label: (c.source || "candidate") + " (verification " + fmt.score(c.score) + ")",
          popup: ["RAG candidate #" + (k + 1), "source " + (c.source || "?"), fmt.coord(c.lat) + ", " + fmt.coord(c.lon), "verification score " + fmt.score(c.score)],
          data: { source: c.source, score: c.score },
        }));
        if (r.cell) cells.push({ lat: r.cell.lat, lon: r.cell.lon, radius_km: r.cell.radius_km, label: "Search cell: " + r.cell.radius_km + " km around GeoCLIP's top-1" });
      });
      const photos = top1.length;
      top1 = this._stackTop1(top1);
      this.map.setLayers([
        { id: "cell", label: "Search cell", color: COLORS.cell, kind: "circles", items: cells },
        { id: "pd25", label: "PD\u2082\u2085 circle (" + PD_RADIUS_KM + " km)", color: COLORS.pd25, kind: "circles", items: pd },
        { id: "farthest", label: "Farthest database photos", color: COLORS.farthest, kind: "points", items: far, nofit: true },
        { id: "neighbours", label: "Nearest database photos", color: COLORS.neighbours, kind: "points", items: near },
        { id: "candidates", label: "Top-k candidates" + (many ? " (selected photo)" : ""), color: COLORS.candidates, kind: "points", items: cands },
        { id: "llm", label: "LLM candidates", color: COLORS.llm, kind: "points", items: llm },
        { id: "top1", label: "Top-1 answer", color: COLORS.top1, kind: "points", items: top1, cluster: top1.length > MANY, unit: "photos", count: photos },
      ]);
    }

    _panel() {
      const panel = this.panel;
      panel.textContent = "";
      const ok = this.results.filter((r) => !r.error).length;
      if (this.results.length > 1) {
        const nav = h("nav", { class: "gf-images", "aria-label": "Photos" }, panel);
        h("h2", {}, nav, this.results.length.toLocaleString("en") + " photos (" + ok.toLocaleString("en") + " located)");
        const list = h("ol", { class: "gf-image-list" }, nav);
        const shown = Math.min(this.results.length, 500);
        for (let i = 0; i < shown; i++) {
          const r = this.results[i];
          const li = h("li", {}, list);
          const b = h("button", { type: "button", class: "gf-image-button" + (i === this.selected ? " gf-selected" : ""), "aria-pressed": String(i === this.selected) }, li, baseName(r.image) + (r.error ? " \u2014 error" : ""));
          b.addEventListener("click", () => this.select(i));
        }
        if (shown < this.results.length) h("p", { class: "gf-note" }, nav, "The first " + shown + " photos are listed; every photo is on the map.");
      }
      const r = this.results[this.selected];
      if (!r) {
        h("p", { class: "gf-note" }, panel, "No results yet.");
        return;
      }
      const sec = h("section", { class: "gf-result", "aria-label": "Result for " + baseName(r.image) }, panel);
      const head = h("div", { class: "gf-result-head" }, sec);
      const thumb = this.thumbs[baseName(r.image)];
      if (thumb) h("img", { src: thumb, alt: "The photo " + baseName(r.image), class: "gf-thumb" }, head);
      const title = h("div", {}, head);
      h("h2", { class: "gf-image-name" }, title, baseName(r.image));
      if (r.error) {
        h("p", { class: "gf-error", role: "alert" }, sec, r.error);
        return;
      }
      const p = r.predictions[0];
      h("p", { class: "gf-place", id: "gf-top1-place" }, title, p.place || fmt.coord(p.lat) + ", " + fmt.coord(p.lon));
      const facts = h("dl", { class: "gf-facts" }, sec);
      const fact = (k, v, id, cls) => {
        h("dt", {}, facts, k);
        const dd = h("dd", id ? { id: id } : {}, facts, v);
        if (cls) dd.className = cls;
      };
      fact("PD\u2082\u2085 confidence", fmt.prob(r.confidence), "gf-confidence");
      fact("Localizable", r.localizable === null || r.localizable === undefined ? "\u2013" : r.localizable ? "yes" : "no", "gf-localizable", r.localizable ? "gf-yes" : "gf-no");
      if (r.method) fact("Method", r.method);
      if (r.fallback) fact("Fallback", r.fallback_reason || "yes", "gf-fallback", "gf-no");
      table(sec, "Candidates", ["#", "Latitude", "Longitude", "Probability", "Place"],
        r.predictions.map((c, k) => [String(k + 1), fmt.coord(c.lat), fmt.coord(c.lon), fmt.prob(c.prob), c.place || "\u2013"]),
        (k) => {
          const c = r.predictions[k];
          return { class: "gf-row-prediction", "data-lat": String(c.lat), "data-lon": String(c.lon), "data-prob": String(c.prob), "data-place": c.place === null ? "" : String(c.place) };
        }).id = "gf-predictions";
      if (r.candidates && r.candidates.length) {
        table(sec, "LLM candidates (geo-verified)", ["#", "Latitude", "Longitude", "Source", "Score"],
          r.candidates.map((c, k) => [String(k + 1), fmt.coord(c.lat), fmt.coord(c.lon), c.source || "\u2013", fmt.score(c.score)]),
          (k) => ({ class: "gf-row-llm", "data-lat": String(r.candidates[k].lat), "data-lon": String(r.candidates[k].lon), "data-score": String(r.candidates[k].score) })).id = "gf-llm";
      }
      for (const [list, cap, id] of [[r.neighbours, "Nearest database photos", "gf-neighbours"], [r.farthest, "Farthest database photos", "gf-farthest"]]) {
        if (!list || !list.length) continue;
        const d = h("details", { class: "gf-details" }, sec);
        h("summary", {}, d, cap + " (" + list.length + ")");
        table(d, cap, ["#", "Photo", "Similarity", "Latitude", "Longitude"],
          list.map((n, k) => [String(k + 1), baseName(n.image || "row " + n.id), fmt.score(n.similarity), fmt.coord(n.lat), fmt.coord(n.lon)]),
          (k) => ({ "data-lat": String(list[k].lat), "data-lon": String(list[k].lon), "data-similarity": String(list[k].similarity) })).id = id;
      }
    }
  }

  class CoverageView {
    constructor(map, panel) {
      this.map = map;
      this.panel = panel;
    }

    setCoverage(cov) {
      const cells = cov.cells || [];
      const maxN = cells.reduce((m, c) => Math.max(m, c[2]), 1);
      const items = cells.map((c) => ({
        lat: c[0], lon: c[1], weight: c[2], r: 4 + 8 * Math.log10(c[2]) / Math.max(1, Math.log10(maxN)),
        label: c[2].toLocaleString("en") + " photos near " + fmt.coord(c[0]) + ", " + fmt.coord(c[1]),
        popup: [c[2].toLocaleString("en") + " photos", "mean position " + fmt.coord(c[0]) + ", " + fmt.coord(c[1]), "grid cell " + cov.cell_deg + "\u00b0"],
        data: { count: c[2] },
      }));
      this.map.setLayers([{ id: "coverage", label: "Database photos", color: COLORS.coverage, kind: "points", items: items, cluster: true, unit: "photos" }]);
      this.map.fitPoints(items.map((i) => [i.lat, i.lon]), 8);
      this.panel.textContent = "";
      const sec = h("section", { class: "gf-result" }, this.panel);
      h("h2", {}, sec, "Database coverage");
      const facts = h("dl", { class: "gf-facts" }, sec);
      const fact = (k, v, id) => { h("dt", {}, facts, k); h("dd", { id: id }, facts, v); };
      fact("Photos", Number(cov.rows).toLocaleString("en"), "gf-cov-rows");
      fact("Occupied cells", cells.length.toLocaleString("en"), "gf-cov-cells");
      fact("Cell size", cov.cell_deg + "\u00b0 \u00d7 " + cov.cell_deg + "\u00b0", "gf-cov-cell-deg");
      h("p", { class: "gf-note" }, sec, "Photo positions are counted per grid cell (each marker sits at the mean position of its photos); nearby cells are merged into numbered clusters at the current zoom. Click a cluster to zoom in.");
      const top = cells.slice().sort((a, b) => b[2] - a[2]).slice(0, 10);
      table(sec, "Busiest cells", ["#", "Latitude", "Longitude", "Photos"], top.map((c, k) => [String(k + 1), fmt.coord(c[0]), fmt.coord(c[1]), c[2].toLocaleString("en")]));
    }
  }

  function configure(c) {
    if (c && c.pd_radius_km) PD_RADIUS_KM = c.pd_radius_km;
    if (c && c.localizable_threshold !== undefined) LOCALIZABLE = c.localizable_threshold;
  }

  global.GeofastView = { ResultsView: ResultsView, CoverageView: CoverageView, configure: configure, fmt: fmt, h: h, baseName: baseName };
})(window);
