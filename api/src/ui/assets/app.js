// Waymark dashboard: the little JavaScript it has. Everything works without it except
// local times, confirmations and live updates.
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
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => localTimes(document));
