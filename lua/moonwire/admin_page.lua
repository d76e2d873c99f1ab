-- The admin dashboard: one self-contained HTML page (no external assets) that polls /stats
-- every second and draws a chart per metric with one line per loop.
local _M = { _VERSION = "0.1.0" }

_M.html = [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>moonwire dashboard</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  #summary { color: #555; margin-bottom: 12px; }
  #charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
  .chart { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
  .chart h2 { font-size: 14px; margin: 0 0 4px; }
  .chart .now { float: right; color: #555; font-weight: normal; }
  canvas { width: 100%; height: 160px; display: block; }
  #loops { margin-top: 12px; border-collapse: collapse; background: #fff; }
  #loops td, #loops th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
  .err { color: #b00; text-align: left !important; }
  #legend { margin-bottom: 8px; }
  #legend span { display: inline-block; margin-right: 12px; }
</style>
</head>
<body>
<h1>moonwire</h1>
<div id="summary">connecting…</div>
<div id="legend"></div>
<div id="charts"></div>
<table id="loops"></table>
<script>
"use strict";
const COLORS = ["#d33", "#36c", "#2a2", "#c6c", "#e80", "#0aa", "#963", "#666"];
const HISTORY = 60;  // points per chart: the last minute
const METRICS = [
  { key: "conns", title: "Connections", get: (l) => l.open_conns },
  { key: "msgs", title: "Messages/s (in)", get: (l) => l.rates.messages_in || 0 },
  { key: "bytes", title: "Bytes/s (in + out)", get: (l) => (l.rates.bytes_in || 0) + (l.rates.bytes_out || 0) },
  // "now" shows the sum over loops, except for lag where the worst loop is what matters.
  { key: "lag", title: "Event-loop lag (ms)", get: (l) => l.lag_us / 1000, worst: true },
  { key: "lua", title: "Lua memory (KiB)", get: (l) => l.lua_bytes / 1024 },
];
const series = {};   // metric key -> loop id -> [values]
const charts = {};

function fmt(v) {
  const one = (x) => (Math.round(x * 10) / 10) + "";
  if (v >= 1e9) return one(v / 1e9) + "G";
  if (v >= 1e6) return one(v / 1e6) + "M";
  if (v >= 1e4) return one(v / 1e3) + "k";
  return one(v);
}

function makeChart(m) {
  const div = document.createElement("div");
  div.className = "chart";
  div.innerHTML = `<h2>${m.title}<span class="now"></span></h2><canvas data-metric="${m.key}"></canvas>`;
  document.getElementById("charts").appendChild(div);
  charts[m.key] = { canvas: div.querySelector("canvas"), now: div.querySelector(".now") };
  series[m.key] = {};
}

// The top of the axis: four equal steps of 1, 2, 2.5 or 5 times a power of ten, the smallest
// that reaches v, so the grid lines read as round numbers.
function niceMax(v) {
  const raw = v / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const k of [1, 2, 2.5, 5, 10]) if (k * p >= raw) return 4 * k * p;
  return 40 * p;
}

function draw(m) {
  const c = charts[m.key].canvas;
  const w = c.width = c.clientWidth * devicePixelRatio;
  const h = c.height = c.clientHeight * devicePixelRatio;
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const all = Object.values(series[m.key]).flat();
  const max = niceMax(Math.max(1, ...all) * 1.05);
  const dpr = devicePixelRatio;
  g.strokeStyle = "#eee";
  g.fillStyle = "#999";
  g.font = `${11 * dpr}px sans-serif`;
  for (let i = 0; i <= 4; i++) {
    const y = h - (h - 4) * i / 4 - 2;
    g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke();
    // The top label goes below its grid line, the others above theirs.
    g.fillText(fmt(max * i / 4), 4, i === 4 ? y + 12 * dpr : y - 2);
  }
  let total = 0;
  for (const [id, vals] of Object.entries(series[m.key])) {
    g.strokeStyle = COLORS[(id - 1) % COLORS.length];
    g.fillStyle = g.strokeStyle;
    g.lineWidth = 2 * dpr;
    g.beginPath();
    let x = 0, y = 0;
    vals.forEach((v, i) => {
      x = w - 4 * dpr - (vals.length - 1 - i) * (w - 4 * dpr) / (HISTORY - 1);
      y = h - 2 - (h - 4) * v / max;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
    // A dot on the newest value, so a series with one point (or a flat one) still shows.
    g.beginPath(); g.arc(x, y, 3 * dpr, 0, 2 * Math.PI); g.fill();
    const last = vals[vals.length - 1] || 0;
    total = m.worst ? Math.max(total, last) : total + last;
  }
  charts[m.key].now.textContent = (m.worst ? "now (worst loop): " : "now: ") + fmt(total);
  c.dataset.points = all.length;
}

async function tick() {
  try {
    const r = await fetch("/stats", { cache: "no-store" });
    const s = await r.json();
    const p = s.process;
    document.getElementById("summary").textContent = `${p.loops} loop(s) · ` +
      `RSS ${(p.rss_bytes / 1048576).toFixed(1)} MiB · ${p.open_fds} fds · CPU ${p.cpu_seconds.toFixed(2)} s`;
    document.getElementById("legend").innerHTML = s.loops.map((l) =>
      `<span style="color:${COLORS[(l.id - 1) % COLORS.length]}">■ loop ${l.id}</span>`).join("");
    for (const m of METRICS) {
      for (const l of s.loops) {
        const vals = series[m.key][l.id] = series[m.key][l.id] || [];
        vals.push(m.get(l));
        if (vals.length > HISTORY) vals.shift();
      }
      draw(m);
    }
    const rows = s.loops.map((l) => `<tr><td>${l.id}</td><td>${l.generation}</td><td>${l.open_conns}</td>
      <td>${l.accepted}</td><td>${l.handler_errors}</td><td>${l.stuck}</td>
      <td class="err">${l.reload_error ? l.reload_error.replace(/</g, "&lt;") : ""}</td></tr>`);
    document.getElementById("loops").innerHTML =
      "<tr><th>loop</th><th>generation</th><th>open</th><th>accepted</th><th>errors</th><th>stuck</th>" +
      "<th>last reload error</th></tr>" +
      rows.join("");
    document.body.dataset.updates = (+document.body.dataset.updates || 0) + 1;
  } catch (e) {
    document.getElementById("summary").textContent = "cannot reach the server: " + e;
  }
}

METRICS.forEach(makeChart);
tick();
setInterval(tick, 1000);
</script>
</body>
</html>
]==]

return _M
