// Waymark dashboard: the little JavaScript it has. Every page works without it; it
// adds local times, confirmations before actions, and live updates.
"use strict";

// Times arrive as UTC; show them in the browser's zone, UTC stays in the tooltip.
function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) t.textContent = d.toLocaleString();
  }
}

// Every action asks first.
document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

// Live regions: on each `change` event the page is fetched again and each region whose
// server HTML changed is swapped, unless the operator is in it (focus, or a field they
// changed): filters, scroll and a half-typed payload are never touched.
const served = new WeakMap();

function busyIn(region) {
  if (region.contains(document.activeElement) && document.activeElement !== document.body) return true;
  for (const f of region.querySelectorAll("input, textarea, select")) {
    if (f.type === "hidden") continue;
    if (f.tagName === "SELECT") {
      for (const o of f.options) if (o.selected !== o.defaultSelected) return true;
    } else if (f.value !== f.defaultValue) return true;
  }
  return false;
}

// The page to fetch again: a page answering a POST (a refused signal) names its own
// address, so a live update never repeats the POST.
function liveUrl() {
  const named = document.querySelector("[data-live-url]");
  return named ? named.getAttribute("data-live-url") : location.href;
}

let fetching = false;
let again = false;

async function refresh() {
  if (fetching) { again = true; return; }
  fetching = true;
  try {
    const response = await fetch(liveUrl(), { credentials: "same-origin" });
    // Sent to the login: go there rather than show stale data. Any other failure keeps
    // the page as it is until the next change.
    if (response.redirected) { location.assign(response.url); return; }
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const region of document.querySelectorAll("[data-live][id]")) {
      const next = fresh.getElementById(region.id);
      if (!next || next.innerHTML === served.get(region) || busyIn(region)) continue;
      region.innerHTML = next.innerHTML;
      served.set(region, next.innerHTML);
      localTimes(region);
    }
    document.body.dataset.liveUpdates = String(Number(document.body.dataset.liveUpdates || 0) + 1);
  } finally {
    fetching = false;
    if (again) { again = false; refresh(); }
  }
}

function live() {
  const regions = document.querySelectorAll("[data-live][id]");
  if (!regions.length || !window.EventSource) return;
  for (const r of regions) served.set(r, r.innerHTML);
  const ids = new Set([...document.querySelectorAll("[data-run]")].map((e) => e.getAttribute("data-run")));
  const query = [...ids].slice(0, 100).map((id) => "run=" + encodeURIComponent(id)).join("&");
  const events = new EventSource("/ui/events" + (query ? "?" + query : ""));
  events.addEventListener("change", refresh);
  // The session ended: reloading shows the login.
  events.addEventListener("end", () => { events.close(); location.assign(liveUrl()); });
}

document.addEventListener("DOMContentLoaded", () => {
  live();
  localTimes(document);
});
