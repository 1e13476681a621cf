// Live updates for Sluice's pages; every page also works without this file.
"use strict";

// ANSI SGR colours as spans, as the server renders stored lines.
function ansiToNodes(text) {
  const out = document.createDocumentFragment();
  let classes = [];
  const parts = text.split(/\u001b\[([0-9;]*)([A-Za-z])/);
  for (let i = 0; i < parts.length; i += 3) {
    if (parts[i]) {
      const node = classes.length ? document.createElement("span") : document.createTextNode(parts[i]);
      if (classes.length) { node.className = classes.join(" "); node.textContent = parts[i]; }
      out.appendChild(node);
    }
    if (i + 2 < parts.length && parts[i + 2] === "m") {
      for (const code of parts[i + 1].split(";").map(Number)) {
        if (code === 0 || Number.isNaN(code)) classes = [];
        else if (code === 1) classes.push("ansi-bold");
        else if (code >= 30 && code <= 37) classes.push("ansi-" + (code - 30));
        else if (code >= 90 && code <= 97) classes.push("ansi-" + (code - 82));
      }
    }
  }
  return out;
}

// A running job's log: lines arrive over SSE and are appended.
function followLog(pre) {
  let after = Number(pre.dataset.after || -1);
  const source = new EventSource(pre.dataset.follow);
  source.addEventListener("line", (event) => {
    const line = JSON.parse(event.data);
    if (line.seq <= after) return;
    after = line.seq;
    const row = document.createElement("span");
    row.className = "line " + line.stream;
    row.dataset.seq = line.seq;
    const job = document.createElement("span");
    job.className = "job-name";
    job.textContent = line.job;
    row.append(job, " ", ansiToNodes(line.line), "\n");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    pre.appendChild(row);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", (event) => {
    source.close();
    const status = document.getElementById("run-status");
    if (status) {
      const end = JSON.parse(event.data);
      status.textContent = end.status;
      status.className = "badge " + end.status;
    }
  });
}

// A fragment fetched again every few seconds (an experiment's charts).
function reload(element) {
  const every = Number(element.dataset.every || 2000);
  setInterval(async () => {
    const response = await fetch(element.dataset.reload, { credentials: "same-origin" });
    if (response.ok) element.innerHTML = await response.text();
  }, every);
}

// A part of a page refreshed from the page itself every few seconds.
function refresh(element, index) {
  const every = Number(element.dataset.refresh);
  setInterval(async () => {
    if (document.activeElement && element.contains(document.activeElement)) return;
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.querySelectorAll("[data-refresh]")[index];
    if (fresh) element.innerHTML = fresh.innerHTML;
  }, every);
}

document.querySelectorAll("pre[data-follow]").forEach(followLog);
document.querySelectorAll("[data-reload]").forEach(reload);
document.querySelectorAll("[data-refresh]").forEach(refresh);
