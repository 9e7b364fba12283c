// geofast map: a small Web-Mercator SVG map written for geofast (no third-party code).
// Country outlines (Natural Earth, public domain), pan + zoom (wheel, drag, keys, buttons),
// markers with tooltips and popups, grid clustering per zoom level, geodesic km circles, layer
// toggles and optional XYZ tiles. World coordinates: x, y in [0, 256) at zoom 0 (Web Mercator,
// as XYZ tiles); screen = (world - centre) * 2^zoom + half the view size.
// The world wraps at the antimeridian: x is periodic with period 256. The view's centre x is kept
// in [0, 256); every marker and circle is drawn at the copy of its x nearest the centre, the land
// is drawn once per world copy the view shows, and fits use the shortest longitude span on the
// circle, so data on both sides of +-180 degrees is drawn together.
"use strict";
(function (global) {
  const SVGNS = "http://www.w3.org/2000/svg";
  const WORLD = 256;
  const MAX_LAT = 85.0511287798;
  let EARTH_R_KM = 6371.0088; // the page sets geofast.constants.EARTH_RADIUS_KM (GeoMap.configure)
  const CLUSTER_PX = 56;
  const DEG = Math.PI / 180;

  function project(lat, lon) {
    const la = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * DEG;
    return [((lon + 180) / 360) * WORLD, ((1 - Math.log(Math.tan(Math.PI / 4 + la / 2)) / Math.PI) / 2) * WORLD];
  }

  function unproject(x, y) {
    const lon = (x / WORLD) * 360 - 180;
    const lat = Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / WORLD))) / DEG;
    return [lat, lon];
  }

  // Point at distance distKm and bearing bearingDeg from (lat, lon) on the sphere.
  function destination(lat, lon, bearingDeg, distKm) {
    const d = distKm / EARTH_R_KM, b = bearingDeg * DEG, p1 = lat * DEG, l1 = lon * DEG;
    const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(b));
    const l2 = l1 + Math.atan2(Math.sin(b) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2));
    return [p2 / DEG, ((((l2 / DEG) + 540) % 360) - 180)];
  }

  // A geodesic circle as a ring of world points (unwrapped in longitude around the centre).
  function circleRing(lat, lon, radiusKm, n) {
    const pts = [];
    const [cx] = project(lat, lon);
    for (let i = 0; i <= n; i++) {
      const [la, lo] = destination(lat, lon, (360 * i) / n, radiusKm);
      let [x, y] = project(la, lo);
      if (x - cx > WORLD / 2) x -= WORLD;
      if (cx - x > WORLD / 2) x += WORLD;
      pts.push([x, y]);
    }
    return pts;
  }

  // x + k * WORLD for the integer k that puts it nearest ref (within half a world).
  function wrapNear(x, ref) {
    return x + WORLD * Math.round((ref - x) / WORLD);
  }

  // The shortest interval [x0, x1] (x1 - x0 < WORLD, x0 in [0, WORLD)) that holds every x modulo
  // WORLD: the complement of the widest gap between neighbours on the circle. When wrapping across
  // +-180 degrees saves less than a fifth of the span, the usual [min, max] is kept, so data spread
  // over the whole world stays centred on Greenwich instead of on an arbitrary gap.
  function lonSpan(xs) {
    const v = xs.map((x) => ((x % WORLD) + WORLD) % WORLD).sort((a, b) => a - b);
    const n = v.length;
    let gap = v[0] + WORLD - v[n - 1], at = -1;
    for (let i = 0; i + 1 < n; i++) {
      if (v[i + 1] - v[i] > gap) { gap = v[i + 1] - v[i]; at = i; }
    }
    if (at < 0 || v[n - 1] - v[0] <= 1.25 * (WORLD - gap)) return [v[0], v[n - 1]];
    return [v[at + 1], v[at] + WORLD];
  }

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVGNS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function h(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function fmtInt(n) {
    return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function ringPath(points) {
    let d = "";
    for (let i = 0; i < points.length; i++) d += (i ? "L" : "M") + points[i][0].toFixed(3) + " " + points[i][1].toFixed(3);
    return d + "Z";
  }

  // Decode geofast's compact outlines: rings of integers in 1/scale degree, deltas after the first.
  // d fills the land; border strokes the coasts and borders but leaves out the edges that only
  // close a ring along the map's edges (Natural Earth cuts Russia, Fiji and Antarctica at +-180
  // degrees and closes Antarctica along -90), so land drawn on both sides of 180 shows no seam.
  function outlinePaths(outlines) {
    const s = outlines.scale, E = 180 * s, P = 90 * s;
    const cut = (lon0, lat0, lon1, lat1) => (Math.abs(lon0) === E && lon1 === lon0) || (Math.abs(lat0) === P && lat1 === lat0);
    return outlines.countries.map(function (c) {
      let d = "", border = "";
      for (const ring of c.rings) {
        let lon = ring[0], lat = ring[1];
        const ll = [[lon, lat]];
        for (let i = 2; i < ring.length; i += 2) {
          lon += ring[i];
          lat += ring[i + 1];
          ll.push([lon, lat]);
        }
        if (ll[ll.length - 1][0] !== ll[0][0] || ll[ll.length - 1][1] !== ll[0][1]) ll.push(ll[0]);
        const pts = ll.map((q) => project(q[1] / s, q[0] / s));
        d += ringPath(pts);
        let open = false;
        for (let i = 1; i < ll.length; i++) {
          if (cut(ll[i - 1][0], ll[i - 1][1], ll[i][0], ll[i][1])) { open = false; continue; }
          if (!open) border += "M" + pts[i - 1][0].toFixed(3) + " " + pts[i - 1][1].toFixed(3);
          border += "L" + pts[i][0].toFixed(3) + " " + pts[i][1].toFixed(3);
          open = true;
        }
      }
      return { name: c.name, iso: c.iso_a3, d: d, border: border };
    });
  }

  class GeoMap {
    // opts: {outlines, tiles (XYZ URL template or null), attribution}
    constructor(container, opts) {
      opts = opts || {};
      this.root = container;
      this.root.classList.add("gf-map");
      this.root.setAttribute("tabindex", "0");
      this.root.setAttribute("role", "application");
      this.root.setAttribute("aria-label", opts.label || "Map. Arrow keys pan, plus and minus zoom.");
      this.layers = [];
      this.zoom = 1;
      this.minZoom = 0;
      this.maxZoom = 18;
      this.center = [WORLD / 2, WORLD / 2];
      this.tiles = opts.tiles || null;
      this.clusterCache = new Map();
      this.onselect = null;

      this.svg = el("svg", { class: "gf-svg", role: "img", "aria-label": "World map" }, this.root);
      this.gWorld = el("g", { class: "gf-world" }, this.svg);
      this.gTiles = el("g", { class: "gf-tiles" }, this.gWorld);
      this.gCountries = el("g", { class: "gf-countries" + (this.tiles ? " gf-over-tiles" : "") }, this.gWorld);
      this.gShapes = el("g", { class: "gf-shapes" }, this.gWorld);
      this.gMarkers = el("g", { class: "gf-markers" }, this.svg);
      // The land of world copy k is a group translated by k * WORLD; copy 0 is built once and the
      // others are clones made when a view first shows them.
      this.landCopies = new Map();
      const land0 = el("g", { class: "gf-land", "data-copy": "0" }, this.gCountries);
      this.landCopies.set(0, land0);
      if (opts.outlines) {
        const borders = [];
        for (const c of outlinePaths(opts.outlines)) {
          el("path", { d: c.d, class: "gf-country", "data-name": c.name }, land0);
          borders.push(c.border);
        }
        el("path", { d: borders.join(""), class: "gf-borders" }, land0);
      }
      this.gCountries.addEventListener("pointerover", (ev) => {
        const p = ev.target.closest && ev.target.closest(".gf-country");
        if (p) this._tip(p.getAttribute("data-name"), ev);
      });
      this.gCountries.addEventListener("pointerout", () => this._tip(null));

      const controls = h("div", { class: "gf-controls" }, this.root);
      const btn = (label, title, fn) => {
        const b = h("button", { type: "button", title: title, "aria-label": title }, controls, label);
        b.addEventListener("click", fn);
        return b;
      };
      btn("+", "Zoom in", () => this.zoomBy(1));
      btn("\u2212", "Zoom out", () => this.zoomBy(-1));
      btn("\u2922", "Fit to the data", () => this.fitAll());

      this.legend = h("div", { class: "gf-legend", role: "group", "aria-label": "Layers" }, this.root);
      this.tooltip = h("div", { class: "gf-tooltip", role: "tooltip", hidden: "" }, this.root);
      this.popup = h("div", { class: "gf-popup", role: "dialog", "aria-label": "Details", hidden: "" }, this.root);
      this.popup.addEventListener("keydown", (ev) => {
        if (ev.key === "Escape") {
          ev.stopPropagation();
          this.popup.hidden = true;
          this.root.focus();
        }
      });
      const attr = h("div", { class: "gf-attribution" }, this.root);
      attr.textContent = "Outlines: Natural Earth (public domain)" + (opts.attribution ? " \u00b7 " + opts.attribution : "");
      this.scaleBar = h("div", { class: "gf-scale", "aria-hidden": "true" }, this.root);

      this._bindEvents();
      this._resizeObserver = new ResizeObserver(() => this.render());
      this._resizeObserver.observe(this.root);
    }

    size() {
      // Measured once per draw: reading clientWidth after appending markers would force a layout each time.
      return this._sz || [this.root.clientWidth || 800, this.root.clientHeight || 500];
    }

    scale() {
      return Math.pow(2, this.zoom);
    }

    toScreen(wx, wy) {
      const [w, hgt] = this.size(), s = this.scale();
      return [(wx - this.center[0]) * s + w / 2, (wy - this.center[1]) * s + hgt / 2];
    }

    toWorld(sx, sy) {
      const [w, hgt] = this.size(), s = this.scale();
      return [(sx - w / 2) / s + this.center[0], (sy - hgt / 2) / s + this.center[1]];
    }

    _clampZoom(z) {
      const [w, hgt] = this.size();
      const fill = Math.log2(Math.max(1, Math.min(w, hgt)) / WORLD) - 0.5; // the world fills the view
      return Math.max(Math.min(this.minZoom, fill), Math.min(this.maxZoom, z));
    }

    // Longitude wraps (the centre's x is kept in [0, WORLD)); latitude stops at the map's edge.
    _clampCenter() {
      this.center[0] = ((this.center[0] % WORLD) + WORLD) % WORLD;
      this.center[1] = Math.max(0, Math.min(WORLD, this.center[1]));
    }

    // Screen position of world point (wx, wy), at the copy of wx nearest the view's centre.
    screenOf(wx, wy) {
      return this.toScreen(wrapNear(wx, this.center[0]), wy);
    }

    setView(lat, lon, zoom) {
      this.center = project(lat, lon);
      this._clampCenter();
      this.zoom = this._clampZoom(zoom);
      this.render();
    }

    zoomBy(dz, sx, sy) {
      const [w, hgt] = this.size();
      if (sx === undefined) { sx = w / 2; sy = hgt / 2; }
      const before = this.toWorld(sx, sy);
      this.zoom = this._clampZoom(Math.round((this.zoom + dz) * 2) / 2);
      const after = this.toWorld(sx, sy);
      this.center[0] += before[0] - after[0];
      this.center[1] += before[1] - after[1];
      this._clampCenter();
      this.render();
    }

    // Fit the view to world-coordinate bounds [[x0, y0], [x1, y1]] (x1 may exceed WORLD: a span
    // across the antimeridian).
    fitWorld(x0, y0, x1, y1, maxZoom) {
      const [w, hgt] = this.size();
      const pad = 48;
      const dx = Math.max(x1 - x0, 1e-9), dy = Math.max(y1 - y0, 1e-9);
      const z = Math.log2(Math.min((w - 2 * pad) / dx, (hgt - 2 * pad) / dy));
      this.center = [(x0 + x1) / 2, (y0 + y1) / 2];
      this._clampCenter();
      this.zoom = this._clampZoom(Math.floor(Math.min(z, maxZoom === undefined ? 10 : maxZoom) * 2) / 2);
      this.render();
    }

    fitPoints(latlons, maxZoom) {
      if (!latlons.length) return this.fitWorld(0, 40, WORLD, 200, 1);
      let y0 = Infinity, y1 = -Infinity;
      const xs = [];
      for (const [lat, lon] of latlons) {
        const [x, y] = project(lat, lon);
        xs.push(x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
      const [x0, x1] = lonSpan(xs);
      const m = 0.02; // a little context around single points
      this.fitWorld(x0 - m, y0 - m, x1 + m, y1 + m, maxZoom);
    }

    fitAll() {
      const pts = [];
      for (const layer of this.layers) {
        if (!layer.visible || layer.nofit) continue;
        for (const it of layer.items) pts.push([it.lat, it.lon]);
      }
      this.fitPoints(pts);
    }

    // layers: [{id, label, color, kind: "points" | "circles", items, visible, cluster, nofit}]
    // points items: {lat, lon, r (px), shape ("dot" | "pin" | "diamond"), weight, label, popup: [lines], data: {...}}
    // circle items: {lat, lon, radius_km, label}
    setLayers(layers) {
      this.layers = layers.map((l) => Object.assign({ visible: true, cluster: false }, l));
      for (const l of this.layers) {
        for (const it of l.items) {
          const w = project(it.lat, it.lon);
          it._wx = w[0];
          it._wy = w[1];
          if (l.kind === "circles") it._ring = null;
        }
      }
      this.clusterCache.clear();
      this._buildLegend();
      this.render();
    }

    setLayerVisible(id, visible) {
      for (const l of this.layers) if (l.id === id) l.visible = visible;
      const box = this.legend.querySelector('input[data-layer="' + id + '"]');
      if (box) box.checked = visible;
      this.render();
    }

    _buildLegend() {
      this.legend.textContent = "";
      const outlines = h("label", { class: "gf-legend-item" }, this.legend);
      const cb0 = h("input", { type: "checkbox", "data-layer": "countries" }, outlines);
      cb0.checked = true;
      cb0.addEventListener("change", () => this.gCountries.toggleAttribute("hidden", !cb0.checked));
      h("span", { class: "gf-swatch gf-swatch-countries", "aria-hidden": "true" }, outlines);
      h("span", {}, outlines, "Countries");
      for (const l of this.layers) {
        if (!l.items.length) continue;
        const lab = h("label", { class: "gf-legend-item" }, this.legend);
        const cb = h("input", { type: "checkbox", "data-layer": l.id }, lab);
        cb.checked = l.visible;
        cb.addEventListener("change", () => this.setLayerVisible(l.id, cb.checked));
        const sw = h("span", { class: "gf-swatch" + (l.kind === "circles" ? " gf-swatch-ring" : ""), "aria-hidden": "true" }, lab);
        sw.style.setProperty("--c", l.color);
        h("span", {}, lab, l.label + " (" + (l.count === undefined ? l.items.length : l.count).toLocaleString("en") + ")");
      }
    }

    _clusters(layer) {
      const key = layer.id + "@" + this.zoom;
      let cached = this.clusterCache.get(key);
      if (cached) return cached;
      const s = this.scale();
      // A whole number of columns around the world (about CLUSTER_PX wide on screen), so the grid
      // is periodic in longitude: +-180 degrees is an ordinary column boundary, not an edge.
      const cols = Math.max(1, Math.round((WORLD * s) / CLUSTER_PX));
      const cellW = WORLD / cols;
      const cells = new Map();
      for (const it of layer.items) {
        const col = Math.min(cols - 1, Math.floor((((it._wx % WORLD) + WORLD) % WORLD) / cellW));
        const k = col + "," + Math.floor((it._wy * s) / CLUSTER_PX);
        let c = cells.get(k);
        if (!c) { c = { items: [], n: 0, sx: 0, sy: 0, ref: it._wx }; cells.set(k, c); }
        const w = it.weight || 1;
        c.items.push(it);
        c.n += w;
        c.sx += wrapNear(it._wx, c.ref) * w; // members of one column on either side of +-180
        c.sy += it._wy * w;
      }
      cached = [];
      for (const c of cells.values()) {
        if (c.items.length === 1) cached.push({ item: c.items[0] });
        else cached.push({ cluster: true, n: c.n, count: c.items.length, wx: c.sx / c.n, wy: c.sy / c.n, items: c.items });
      }
      this.clusterCache.set(key, cached);
      return cached;
    }

    render() {
      if (this._raf) return;
      this._raf = requestAnimationFrame(() => {
        this._raf = 0;
        this._draw();
      });
    }

    // Draw synchronously (tests and screenshots call this after setLayers).
    _draw() {
      this._sz = null;
      const [w, hgt] = this.size(), s = this.scale();
      this._sz = [w, hgt];
      try {
        const tx = w / 2 - this.center[0] * s, ty = hgt / 2 - this.center[1] * s;
        this.svg.setAttribute("viewBox", "0 0 " + w + " " + hgt);
        this.svg.setAttribute("width", w);
        this.svg.setAttribute("height", hgt);
        this.gWorld.setAttribute("transform", "matrix(" + s + " 0 0 " + s + " " + tx + " " + ty + ")");
        this.root.dataset.zoom = String(this.zoom);
        if (this.tiles) this._drawTiles(w, hgt);
        this._drawLand(w, hgt);
        this._drawCircles(s);
        this._drawMarkers(w, hgt);
        this._drawScale();
      } finally {
        this._sz = null;
      }
    }

    // One copy of the land per world copy in view (copy k spans x in [k * WORLD, (k + 1) * WORLD)).
    _drawLand(w, hgt) {
      const x0 = this.toWorld(0, 0)[0], x1 = this.toWorld(w, hgt)[0];
      const k0 = Math.floor(x0 / WORLD), k1 = Math.floor(x1 / WORLD);
      const land0 = this.landCopies.get(0);
      for (let k = k0; k <= k1; k++) {
        if (this.landCopies.has(k)) continue;
        const copy = land0.cloneNode(true);
        copy.setAttribute("data-copy", String(k));
        copy.setAttribute("transform", "translate(" + k * WORLD + " 0)");
        this.gCountries.appendChild(copy);
        this.landCopies.set(k, copy);
      }
      for (const [k, g] of this.landCopies) g.toggleAttribute("hidden", k < k0 || k > k1);
    }

    _drawTiles(w, hgt) {
      const z = Math.max(0, Math.min(19, Math.round(this.zoom)));
      const n = Math.pow(2, z), size = WORLD / n;
      const [x0, y0] = this.toWorld(0, 0), [x1, y1] = this.toWorld(w, hgt);
      const want = new Set();
      // Columns wrap around the world: column i shows tile i mod n, at most one world's worth either side.
      const i0 = Math.max(Math.floor(x0 / size), -n), i1 = Math.min(Math.floor(x1 / size), 2 * n - 1);
      for (let i = i0; i <= i1; i++) {
        for (let j = Math.max(0, Math.floor(y0 / size)); j <= Math.min(n - 1, Math.floor(y1 / size)); j++) {
          want.add(z + "/" + i + "/" + j);
        }
      }
      for (const img of Array.from(this.gTiles.children)) {
        if (!want.has(img.dataset.key)) img.remove();
        else want.delete(img.dataset.key);
      }
      for (const key of want) {
        const [zz, i, j] = key.split("/").map(Number);
        const url = this.tiles.replace("{z}", zz).replace("{x}", ((i % n) + n) % n).replace("{y}", j);
        const img = el("image", { href: url, x: i * size, y: j * size, width: size, height: size, preserveAspectRatio: "none" }, this.gTiles);
        img.dataset.key = key;
      }
    }

    _drawCircles(s) {
      this.gShapes.textContent = "";
      const [w, hgt] = this.size();
      let drawn = 0;
      for (const l of this.layers) {
        if (!l.visible || l.kind !== "circles") continue;
        for (const it of l.items) {
          if (drawn >= 500) break;
          const [sx, sy] = this.screenOf(it._wx, it._wy);
          if (sx < -w || sx > 2 * w || sy < -hgt || sy > 2 * hgt) continue;
          // Skip circles smaller than a marker on screen (25 km at world zoom is under a pixel).
          const rPx = (it.radius_km / ((Math.cos(it.lat * DEG) * 2 * Math.PI * EARTH_R_KM) / WORLD)) * s;
          if (rPx < 3) continue;
          if (!it._ring) it._ring = circleRing(it.lat, it.lon, it.radius_km, 96);
          // The ring is unwrapped around its own centre; shift it to the centre's copy nearest the view.
          const shift = wrapNear(it._wx, this.center[0]) - it._wx;
          const p = el("path", { d: ringPath(it._ring), class: "gf-circle", "data-layer": l.id, "data-radius-km": it.radius_km }, this.gShapes);
          if (shift) p.setAttribute("transform", "translate(" + shift + " 0)");
          p.style.setProperty("--c", l.color);
          if (it.label) {
            p.addEventListener("pointerenter", (ev) => this._tip(it.label, ev));
            p.addEventListener("pointerleave", () => this._tip(null));
          }
          drawn++;
        }
      }
    }

    _drawMarkers(w, hgt) {
      this.gMarkers.textContent = "";
      this._hits = [];
      const margin = 40;
      const inView = (sx, sy) => sx > -margin && sx < w + margin && sy > -margin && sy < hgt + margin;
      for (const l of this.layers) {
        if (!l.visible || l.kind !== "points") continue;
        const g = el("g", { class: "gf-layer", "data-layer": l.id }, this.gMarkers);
        const entries = l.cluster ? this._clusters(l) : l.items.map((it) => ({ item: it }));
        for (const e of entries) {
          if (e.cluster) {
            const [sx, sy] = this.screenOf(e.wx, e.wy);
            if (inView(sx, sy)) this._drawCluster(g, l, e, sx, sy);
          } else {
            // Small (unclustered) layers are drawn whole; clustered ones only where visible.
            const [sx, sy] = this.screenOf(e.item._wx, e.item._wy);
            if (!l.cluster || inView(sx, sy)) this._drawMarker(g, l, e.item, sx, sy);
          }
        }
      }
    }

    // Markers and clusters are plain SVG groups; one set of delegated listeners on the marker
    // layer (see _bindEvents) finds what was hit through data-k, so a redraw creates no closures.
    _drawMarker(g, layer, it, sx, sy) {
      const m = el("g", { class: "gf-marker gf-" + (it.shape || "dot"), transform: "translate(" + sx.toFixed(1) + " " + sy.toFixed(1) + ")", tabindex: "0", role: "button" }, g);
      m.setAttribute("style", "--c:" + (it.color || layer.color));
      m.setAttribute("data-k", String(this._hits.length));
      m.setAttribute("data-lat", String(it.lat));
      m.setAttribute("data-lon", String(it.lon));
      for (const k in it.data || {}) if (it.data[k] !== null && it.data[k] !== undefined) m.setAttribute("data-" + k, String(it.data[k]));
      if (it.label) m.setAttribute("aria-label", it.label);
      const r = it.r || 6;
      if (it.shape === "pin") {
        el("path", { d: "M0 0C-3 -8 -11 -12 -11 -21A11 11 0 1 1 11 -21C11 -12 3 -8 0 0Z", class: "gf-shape" }, m);
        el("circle", { cx: 0, cy: -21, r: 4, class: "gf-pin-dot" }, m);
      } else if (it.shape === "diamond") {
        el("path", { d: "M0 " + -r + "L" + r + " 0L0 " + r + "L" + -r + " 0Z", class: "gf-shape" }, m);
      } else if (it.shape === "square") {
        el("rect", { x: -r * 0.85, y: -r * 0.85, width: r * 1.7, height: r * 1.7, class: "gf-shape" }, m);
      } else {
        el("circle", { r: r, class: "gf-shape" }, m);
      }
      if (it.text) el("text", { class: "gf-marker-text", "text-anchor": "middle", dy: "0.35em" }, m).textContent = it.text;
      if (it.count > 1) {
        // Several data points at exactly this position (e.g. photos sharing one top-1): a count badge.
        m.setAttribute("data-count", String(it.count));
        const [bx, by] = it.shape === "pin" ? [10, -32] : [r, -r];
        const badge = el("g", { class: "gf-badge", transform: "translate(" + bx + " " + by + ")" }, m);
        const label = it.count >= 10000 ? Math.round(it.count / 1000) + "k" : String(it.count);
        el("rect", { x: -(4 + 3.5 * label.length), y: -8, width: 8 + 7 * label.length, height: 16, rx: 8, class: "gf-badge-bg" }, badge);
        el("text", { class: "gf-badge-text", "text-anchor": "middle", dy: "0.35em" }, badge).textContent = label;
      }
      this._hits.push({ item: it, sx: sx, sy: sy });
    }

    _drawCluster(g, layer, c, sx, sy) {
      const r = 12 + 4 * Math.log10(c.n);
      const label = fmtInt(c.n) + (layer.unit ? " " + layer.unit : " points") + " \u2014 press to zoom in";
      const m = el("g", { class: "gf-cluster", transform: "translate(" + sx.toFixed(1) + " " + sy.toFixed(1) + ")", tabindex: "0", role: "button", "aria-label": label }, g);
      m.setAttribute("style", "--c:" + layer.color);
      m.setAttribute("data-k", String(this._hits.length));
      m.setAttribute("data-count", String(c.n));
      m.setAttribute("data-members", String(c.count));
      el("circle", { r: r + 4, class: "gf-cluster-halo" }, m);
      el("circle", { r: r, class: "gf-shape" }, m);
      el("text", { "text-anchor": "middle", dy: "0.35em", class: "gf-cluster-text" }, m).textContent = c.n >= 10000 ? Math.round(c.n / 1000) + "k" : String(c.n);
      this._hits.push({ cluster: c, label: label, sx: sx, sy: sy });
    }

    _zoomToCluster(c) {
      let y0 = Infinity, y1 = -Infinity;
      for (const it of c.items) { y0 = Math.min(y0, it._wy); y1 = Math.max(y1, it._wy); }
      const [x0, x1] = lonSpan(c.items.map((it) => it._wx));
      const z = this.zoom;
      this.fitWorld(x0, y0, x1, y1, 18);
      if (this.zoom <= z) {
        const [sx, sy] = this.screenOf((x0 + x1) / 2, (y0 + y1) / 2);
        this.zoomBy(z + 2 - this.zoom, sx, sy);
      }
    }

    _activate(hit) {
      if (hit.cluster) return this._zoomToCluster(hit.cluster);
      const it = hit.item;
      this._openPopup(it.popup || [it.label], hit.sx, hit.sy);
      if (this.onselect && it.select !== undefined) {
        this.onselect(it.select);
        for (const b of this.popup.querySelectorAll(".gf-popup-item")) b.setAttribute("aria-pressed", String(b.dataset.select === String(it.select)));
      }
    }

    // A popup line is text, or {text, select} for a button that selects that data point (the
    // members of a stacked marker), so each is reachable from the map.
    _popupLine(line, i) {
      if (line === null || typeof line !== "object") return h(i === 0 ? "strong" : "div", {}, this.popup, line);
      let list = this.popup.querySelector(".gf-popup-list");
      if (!list) list = h("div", { class: "gf-popup-list", role: "group", "aria-label": "Select one" }, this.popup);
      const b = h("button", { type: "button", class: "gf-popup-item", "aria-pressed": String(!!line.selected), "data-select": String(line.select) }, list, line.text);
      b.addEventListener("click", (ev) => {
        ev.stopPropagation();
        for (const other of this.popup.querySelectorAll(".gf-popup-item")) other.setAttribute("aria-pressed", String(other === b));
        if (this.onselect) this.onselect(line.select);
      });
      return b;
    }

    _drawScale() {
      // Length of 100 px at the view's centre latitude, rounded to 1/2/5 x 10^k km.
      const [lat] = unproject(this.center[0], this.center[1]);
      const kmPerPx = ((Math.cos(lat * DEG) * 2 * Math.PI * EARTH_R_KM) / WORLD) / this.scale();
      const target = kmPerPx * 100;
      const p = Math.pow(10, Math.floor(Math.log10(target)));
      const nice = [5, 2, 1].map((m) => m * p).find((v) => v <= target) || p;
      this.scaleBar.style.width = (nice / kmPerPx).toFixed(0) + "px";
      this.scaleBar.textContent = nice >= 1 ? nice.toLocaleString("en") + " km" : Math.round(nice * 1000) + " m";
    }

    _tip(text, ev) {
      if (!text) { this.tooltip.hidden = true; return; }
      const box = this.root.getBoundingClientRect();
      this.tooltip.textContent = text;
      this.tooltip.hidden = false;
      this.tooltip.style.left = (ev.clientX - box.left + 12) + "px";
      this.tooltip.style.top = (ev.clientY - box.top + 12) + "px";
    }

    _openPopup(lines, sx, sy) {
      this.popup.textContent = "";
      const close = h("button", { type: "button", class: "gf-popup-close", "aria-label": "Close" }, this.popup, "\u00d7");
      close.addEventListener("click", () => { this.popup.hidden = true; this.root.focus(); });
      lines.forEach((line, i) => this._popupLine(line, i));
      this.popup.hidden = false;
      const [w, hgt] = this.size();
      this.popup.style.left = Math.min(Math.max(8, sx - 120), w - 260) + "px";
      // Below the point, or above it when it would run past the bottom of the map.
      const ph = this.popup.offsetHeight;
      const top = sy + 12 + ph > hgt - 8 && sy - 12 - ph >= 8 ? sy - 12 - ph : sy + 12;
      this.popup.style.top = Math.max(8, top) + "px";
      close.focus();
    }

    _bindEvents() {
      const root = this.root;
      root.addEventListener("wheel", (ev) => {
        ev.preventDefault();
        const box = root.getBoundingClientRect();
        this.zoomBy(ev.deltaY < 0 ? 0.5 : -0.5, ev.clientX - box.left, ev.clientY - box.top);
      }, { passive: false });
      let drag = null;
      this.svg.addEventListener("pointerdown", (ev) => {
        if (ev.button !== 0) return;
        drag = { x: ev.clientX, y: ev.clientY, c: this.center.slice(), id: ev.pointerId };
        this._dragged = false;
      });
      this.svg.addEventListener("pointermove", (ev) => {
        if (!drag || ev.pointerId !== drag.id) return;
        const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
        if (!this._dragged && Math.hypot(dx, dy) < 4) return;
        if (!this._dragged) { this._dragged = true; this.svg.setPointerCapture(ev.pointerId); root.classList.add("gf-dragging"); }
        const s = this.scale();
        this.center = [drag.c[0] - dx / s, drag.c[1] - dy / s];
        this._clampCenter();
        this.render();
      });
      const end = () => {
        drag = null;
        root.classList.remove("gf-dragging");
        setTimeout(() => { this._dragged = false; }, 0);
      };
      this.svg.addEventListener("pointerup", end);
      this.svg.addEventListener("pointercancel", end);
      this.svg.addEventListener("dblclick", (ev) => {
        const box = root.getBoundingClientRect();
        this.zoomBy(ev.shiftKey ? -1 : 1, ev.clientX - box.left, ev.clientY - box.top);
      });
      const hitOf = (ev) => {
        const g = ev.target.closest && ev.target.closest("[data-k]");
        return g && this.gMarkers.contains(g) ? this._hits[+g.getAttribute("data-k")] : null;
      };
      this.gMarkers.addEventListener("pointerover", (ev) => {
        const hit = hitOf(ev);
        if (hit) this._tip(hit.cluster ? hit.label : hit.item.label, ev);
      });
      this.gMarkers.addEventListener("pointerout", () => this._tip(null));
      this.gMarkers.addEventListener("click", (ev) => {
        const hit = hitOf(ev);
        if (!hit || this._dragged) return;
        ev.stopPropagation();
        this._activate(hit);
      });
      this.gMarkers.addEventListener("keydown", (ev) => {
        const hit = hitOf(ev);
        if (hit && (ev.key === "Enter" || ev.key === " ")) {
          ev.preventDefault();
          this._activate(hit);
        }
      });
      this.svg.addEventListener("click", () => { if (!this._dragged) this.popup.hidden = true; });
      root.addEventListener("keydown", (ev) => {
        if (ev.target !== root) return;
        const step = 80 / this.scale();
        const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
        if (moves[ev.key]) {
          this.center[0] += moves[ev.key][0];
          this.center[1] += moves[ev.key][1];
          this._clampCenter();
          this.render();
        } else if (ev.key === "+" || ev.key === "=") this.zoomBy(1);
        else if (ev.key === "-") this.zoomBy(-1);
        else if (ev.key === "Escape") this.popup.hidden = true;
        else return;
        ev.preventDefault();
      });
    }
  }

  global.GeoMap = GeoMap;
  global.GeoMap.configure = function (c) {
    if (c && c.earth_radius_km) EARTH_R_KM = c.earth_radius_km;
  };
  global.GeoMap.project = project;
  global.GeoMap.lonSpan = lonSpan;
  global.GeoMap.destination = destination;
})(window);
