// The live view: one tile per source (latest frame, score timeline with the alert
// threshold, current class, state) and the alert list. It seeds itself from
// /api/sources and /api/alerts and then follows /api/events (server-sent events);
// charts are drawn by uPlot (vendored in static/vendor). No build step.
"use strict";
(() => {
  const REDRAW_MS = 500;       // charts are redrawn at most twice a second
  const STATES_MS = 2000;      // source states and frames are re-read this often besides the stream
  const TILE_CHART_HEIGHT = 130;
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token !== null) {
    // The server answered with a cookie for the token: keep it out of the address bar.
    history.replaceState(null, "", location.pathname + location.hash);
  }
  const view = {
    threshold: null, timelineS: 180, tiles: new Map(), byId: new Map(), alerts: new Map(),
    seedTimer: null, statesTimer: null, alertsTimer: null, panelPlot: null, source: null,
  };
  const $ = (sel, root = document) => root.querySelector(sel);

  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  async function getJSON(url) {
    const r = await fetch(withToken(url), { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  const fmtT = (t) => (t === null || t === undefined ? "–" : `${Number(t).toFixed(1)} s`);
  const clock = (wall) => (wall ? new Date(wall * 1000).toLocaleTimeString() : "");
  const fmtScore = (s) => (s === null || s === undefined ? "" : Number(s).toFixed(3));

  function chartOptions(width, height, extra = {}) {
    const axis = { stroke: "#b8bec6", grid: { stroke: "#2b3038", width: 1 }, ticks: { stroke: "#2b3038", width: 1 } };
    return {
      width, height,
      legend: { show: false },
      cursor: { points: { show: false } },
      scales: { x: { time: false }, y: { range: [0, 1] } },
      axes: [{ ...axis, size: 28 }, { ...axis, size: 34 }],
      series: [
        {},
        { label: "score", stroke: "#4ea1ff", width: 1.5, fill: "rgba(78,161,255,0.15)", points: { show: false } },
        { label: "threshold", stroke: "#ff5c5c", width: 1, dash: [6, 4], points: { show: false } },
        ...(extra.series || []),
      ],
    };
  }

  // -- tiles ---------------------------------------------------------------------------
  function makeTile(src) {
    const node = $("#tile-template").content.firstElementChild.cloneNode(true);
    node.dataset.sourceId = src.id;
    node.dataset.source = src.name;
    $(".name", node).textContent = src.name;
    $(".name", node).title = src.name;
    $("#tiles").append(node);
    const chartEl = $(".chart", node);
    const tile = {
      id: src.id, name: src.name, node, chartEl, img: $("img", node), xs: [], ys: [],
      dirty: true, frameT: null, loadingFrame: false,
    };
    tile.plot = new uPlot(chartOptions(chartEl.clientWidth || 320, TILE_CHART_HEIGHT), [[], [], []], chartEl);
    view.tiles.set(src.name, tile);
    view.byId.set(src.id, tile);
    return tile;
  }

  function addPoint(tile, t, score) {
    const n = tile.xs.length;
    if (n && t < tile.xs[n - 1]) { tile.xs = []; tile.ys = []; }     // a restarted source
    else if (n && t === tile.xs[n - 1]) return;                        // already seen (seed and stream overlap)
    tile.xs.push(t);
    tile.ys.push(score === undefined ? null : score);
    tile.dirty = true;
  }

  function setNow(tile, src) {
    $(".label", tile.node).textContent = src.label ?? "–";
    $(".score", tile.node).textContent = fmtScore(src.score);
    const score = $(".score", tile.node);
    const thr = tile.threshold ?? view.threshold;
    score.classList.toggle("high", thr !== null && thr !== undefined && src.score !== null && src.score >= thr);
    const ev = src.evidence;                    // fused runs: each modality's score with the other masked
    $(".evidence", tile.node).textContent = ev && (ev.audio !== null || ev.video !== null)
      ? `audio ${ev.audio === null ? "–" : fmtScore(ev.audio)} · video ${ev.video === null ? "–" : fmtScore(ev.video)}`
      : "";
  }

  function setState(tile, src) {
    const badge = $(".state", tile.node);
    badge.textContent = src.state;
    badge.dataset.state = src.state;
    tile.node.dataset.state = src.state;
    $(".dropped", tile.node).textContent = src.dropped_steps ? `${src.dropped_steps} steps dropped` : "";
  }

  function showFrame(tile, t) {
    if (t === null || t === undefined || t === tile.frameT || tile.loadingFrame) return;
    tile.loadingFrame = true;
    const next = new Image();
    const done = () => { tile.loadingFrame = false; };
    next.onload = () => {
      done();
      tile.frameT = t;
      tile.img.src = next.src;
      tile.img.hidden = false;
      $(".no-frame", tile.node).hidden = true;
      tile.node.dataset.frameT = t;
    };
    next.onerror = done;
    next.src = withToken(`api/sources/${tile.id}/frame.jpg?t=${encodeURIComponent(t)}`);
  }

  function redraw() {
    for (const tile of view.tiles.values()) {
      if (!tile.dirty) continue;
      tile.dirty = false;
      const n = tile.xs.length;
      if (n) {
        const since = tile.xs[n - 1] - view.timelineS;
        let cut = 0;
        while (cut < n && tile.xs[cut] < since) cut++;
        if (cut) { tile.xs = tile.xs.slice(cut); tile.ys = tile.ys.slice(cut); }
      }
      const thr = tile.xs.map(() => tile.threshold ?? view.threshold);
      tile.plot.setData([tile.xs, tile.ys, thr]);
      tile.chartEl.dataset.points = tile.xs.length;
      tile.chartEl.dataset.lastT = tile.xs.length ? tile.xs[tile.xs.length - 1] : "";
    }
  }

  function updateSources(data, withTimeline) {
    view.threshold = data.threshold;
    view.timelineS = data.timeline_s;
    for (const src of data.sources) {
      const tile = view.tiles.get(src.name) || makeTile(src);
      tile.threshold = src.threshold;   // the camera's own (a config file's per-camera threshold)
      if (withTimeline) {
        tile.xs = []; tile.ys = [];
        for (const [t, s] of src.timeline) addPoint(tile, t, s);
        tile.dirty = true;
      }
      setNow(tile, src);
      setState(tile, src);
      showFrame(tile, src.frame_t);
    }
    $("#summary").textContent = `${data.sources.length} source${data.sources.length === 1 ? "" : "s"}`;
  }

  async function seed() {
    try {
      updateSources(await getJSON("api/sources"), true);
      await refreshAlerts();
    } catch (e) {
      console.warn("seed failed", e);
    }
  }

  async function refreshStates() {
    try { updateSources(await getJSON("api/sources?timeline=0"), false); } catch (e) { console.warn(e); }
  }

  function later(key, fn, ms) {
    if (view[key] !== null) return;
    view[key] = setTimeout(() => { view[key] = null; fn(); }, ms);
  }

  // -- alerts --------------------------------------------------------------------------
  function loadSnapshot(img, url, tries = 0) {
    img.onerror = () => {  // the snapshot writer may not have written it yet
      if (tries < 5) setTimeout(() => loadSnapshot(img, url, tries + 1), 1000);
    };
    img.onload = () => { img.hidden = false; };
    img.src = withToken(`${url}?v=${tries}`);
  }

  function renderAlert(alert) {
    let item = view.alerts.get(alert.key);
    if (!item) {
      const node = $("#alert-template").content.firstElementChild.cloneNode(true);
      node.dataset.key = alert.key;
      $(".timeline-link", node).href = `#alert-${alert.key}`;
      $(".timeline-link", node).addEventListener("click", (e) => { e.preventDefault(); showAlertTimeline(alert.key); });
      item = { node, snapshotFor: null, clipFor: null };
      view.alerts.set(alert.key, item);
    }
    const node = item.node;
    node.dataset.open = alert.open;
    node.dataset.alertId = alert.alert_id;
    $(".label", node).textContent = alert.label;
    $(".source", node).textContent = alert.source;
    $(".open", node).hidden = !alert.open;
    const trigger = $(".trigger", node);       // heard | seen | both (fused runs), from the alert's peak step
    trigger.hidden = !alert.trigger;
    trigger.textContent = alert.trigger || "";
    trigger.dataset.trigger = alert.trigger || "";
    const end = alert.open ? "still open" : `end ${fmtT(alert.t_end)}`;
    $(".times", node).textContent =
      `start ${fmtT(alert.t_start)} (${clock(alert.start_wall_time || alert.wall_time)}) · ${end} · ` +
      `peak ${fmtScore(alert.peak_score)} at ${fmtT(alert.peak_t)}`;
    const stamp = `${alert.snapshot_url}|${alert.open}`;
    if (alert.snapshot_url && item.snapshotFor !== stamp) {
      item.snapshotFor = stamp;
      loadSnapshot($(".snapshot", node), alert.snapshot_url);
    }
    if (alert.clip_url && item.clipFor !== alert.clip_url) {  // the alert's video (--clips), once it ended
      item.clipFor = alert.clip_url;
      const video = $(".clip", node);
      video.src = withToken(alert.clip_url);
      video.hidden = false;
      const link = $(".clip-link", node);
      link.href = withToken(alert.clip_url);
      link.hidden = false;
    }
    return node;
  }

  async function refreshAlerts() {
    const data = await getJSON("api/alerts");
    const list = $("#alerts");
    const nodes = data.alerts.map(renderAlert);     // newest first, as the server sends them
    list.replaceChildren(...nodes);
    $("#no-alerts").hidden = nodes.length > 0;
    $("#alert-count").textContent = nodes.length ? `(${nodes.length})` : "";
    if (location.hash.startsWith("#alert-") && !view.panelPlot) showAlertTimeline(location.hash.slice(7));
  }

  async function showAlertTimeline(key) {
    let data;
    try { data = await getJSON(`api/alerts/${encodeURIComponent(key)}/timeline`); } catch (e) { console.warn(e); return; }
    const a = data.alert;
    const xs = data.points.map((p) => p[0]);
    const ys = data.points.map((p) => p[1]);
    const endT = a.t_end === null ? Infinity : a.t_end;
    const span = xs.map((t) => (t >= a.t_start && t <= endT ? 1 : null));
    const panel = $("#alert-panel");
    panel.hidden = false;
    panel.dataset.key = key;
    $("#alert-panel-title").textContent =
      `Alert ${a.alert_id}: ${a.label} on ${a.source}, ${fmtT(a.t_start)} to ${a.open ? "now" : fmtT(a.t_end)}`;
    const el = $("#alert-chart");
    if (view.panelPlot) view.panelPlot.destroy();
    const opts = chartOptions(el.clientWidth || 640, 200, {
      series: [{ label: "alert", stroke: "rgba(255,92,92,0)", fill: "rgba(255,92,92,0.18)", points: { show: false } }],
    });
    view.panelPlot = new uPlot(opts, [xs, ys, xs.map(() => data.threshold), span], el);
    el.dataset.points = xs.length;
    history.replaceState(null, "", `#alert-${key}`);
  }

  $("#alert-panel-close").addEventListener("click", () => {
    $("#alert-panel").hidden = true;
    if (view.panelPlot) { view.panelPlot.destroy(); view.panelPlot = null; }
    history.replaceState(null, "", location.pathname);
  });

  // -- the event stream ------------------------------------------------------------------
  function apply(ev) {
    const tile = view.tiles.get(ev.source);
    if (!tile) { later("seedTimer", seed, 200); return; }      // a source not seen yet: ask for it
    if (ev.type === "score") {
      addPoint(tile, ev.t, ev.score);
      setNow(tile, ev);
    } else if (ev.type === "frame") {
      showFrame(tile, ev.t);
    } else if (ev.type === "alert_start" || ev.type === "alert_end") {
      later("alertsTimer", () => refreshAlerts().catch(console.warn), 100);
    } else {
      later("statesTimer", refreshStates, 100);                   // a status event: the server's state
    }
  }

  function setConnection(state) {
    const badge = $("#connection");
    badge.textContent = state;
    badge.dataset.state = state;
  }

  function connect() {
    const source = new EventSource(withToken("api/events"));
    view.source = source;
    source.onopen = () => { setConnection("live"); seed(); };
    source.onmessage = (m) => apply(JSON.parse(m.data));
    source.addEventListener("dropped", () => later("seedTimer", seed, 200));  // we fell behind: re-read
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {            // refused (e.g. 401) or the server is gone
        setConnection("disconnected");
        setTimeout(connect, 5000);
      } else {
        setConnection("reconnecting");
      }
    };
  }

  window.addEventListener("resize", () => {
    for (const tile of view.tiles.values()) tile.plot.setSize({ width: tile.chartEl.clientWidth, height: TILE_CHART_HEIGHT });
  });
  setInterval(redraw, REDRAW_MS);
  setInterval(refreshStates, STATES_MS);
  connect();
})();
