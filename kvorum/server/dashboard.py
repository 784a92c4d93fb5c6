"""The admin port's dashboard: one self-contained page (no external assets) that polls /api/overview.

It shows the node, its group's members with roles, the term, the leader, the
commit and applied indexes, each follower's lag (as the leader reports it;
ask the leader's dashboard for lags), and an ops/sec chart of the last
minutes drawn as inline SVG from the node's once-a-second samples.
"""

from __future__ import annotations

# How often the page asks for a fresh overview.
REFRESH_MS = 2000

PAGE = ("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kvorum</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .8em; text-align: left; }
th { background: #f4f4f4; }
.ok { color: #070; font-weight: bold; }
.bad { color: #b00; font-weight: bold; }
#chart { border: 1px solid #ddd; background: #fcfcfc; }
.muted { color: #777; }
</style>
</head>
<body>
<h1>kvorum <span id="node"></span></h1>
<div id="status" class="muted">loading&hellip;</div>
<table id="summary"></table>
<h2>Replica group</h2>
<div id="group" class="muted">single node: no replica group</div>
<table id="members"></table>
<h2>Operations per second (last minutes)</h2>
<svg id="chart" width="720" height="180" viewBox="0 0 720 180" role="img" aria-label="ops per second"></svg>
<div id="updated" class="muted"></div>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}
function table(el, head, rows) {
  el.textContent = "";
  const tr = document.createElement("tr");
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
  el.appendChild(tr);
  for (const r of rows) {
    const row = document.createElement("tr");
    for (const c of r) cell(row, c[0], c[1]);
    el.appendChild(row);
  }
}
function chart(history) {
  const svg = document.getElementById("chart");
  const w = 720, h = 180, pad = 30;
  const max = Math.max(1, ...history.map(p => p[1]));
  const n = history.length;
  let points = "";
  history.forEach((p, i) => {
    const x = pad + (n > 1 ? i * (w - 2 * pad) / (n - 1) : 0);
    const y = h - pad - p[1] * (h - 2 * pad) / max;
    points += x.toFixed(1) + "," + y.toFixed(1) + " ";
  });
  svg.innerHTML = '<line x1="' + pad + '" y1="' + (h - pad) + '" x2="' + (w - pad) + '" y2="' + (h - pad)
    + '" stroke="#999"/><text x="2" y="' + (pad - 8) + '" font-size="11">' + max + ' ops/s</text>'
    + '<text x="' + pad + '" y="' + (h - 8) + '" font-size="11">' + n + ' s shown</text>'
    + '<polyline id="ops-line" fill="none" stroke="#1565c0" stroke-width="2" points="' + points.trim() + '"/>';
}
function show(o) {
  document.getElementById("node").textContent = o.node_id + " (" + o.mode + ")";
  const st = document.getElementById("status");
  st.textContent = (o.ready ? "ready" : "not ready") + ": " + o.reason;
  st.className = o.ready ? "ok" : "bad";
  table(document.getElementById("summary"), ["port", "uptime s", "clients", "keys", "memory bytes", "ops/s", "commands"],
        [[[o.port], [o.uptime_s], [o.connected_clients], [o.keys], [o.used_memory_bytes], [o.ops_per_sec],
          [o.commands_processed]]]);
  const g = o.group;
  if (g) {
    document.getElementById("group").textContent = "group " + g.id + ": term " + g.term + ", leader "
      + (g.leader || "none") + ", this node " + g.role + ", commit " + g.commit_index + ", applied "
      + g.applied_index + ", elections seen " + g.elections_seen;
    table(document.getElementById("members"), ["node", "address", "role", "leader", "match index", "lag"],
          g.members.map(m => [[m.id + (m.self ? " (this node)" : "")], [m.address], [m.role],
                              [m.leader ? "leader" : "", m.leader ? "ok" : ""], [m.match_index < 0 ? "?" : m.match_index],
                              [m.lag === null ? "-" : m.lag, m.lag > 100 ? "bad" : ""]]));
  }
  chart(o.ops_history);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("/api/overview", {cache: "no-store"});
    show(await r.json());
  } catch (e) {
    const st = document.getElementById("status");
    st.textContent = "node not answering: " + e;
    st.className = "bad";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
""").replace("__REFRESH_MS__", str(REFRESH_MS)).encode()
