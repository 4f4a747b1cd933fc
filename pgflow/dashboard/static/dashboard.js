// pgflow dashboard: live updates without a framework. The run page subscribes to server-sent
// events for its run and, on each change, fetches the server-rendered fragment and swaps it
// in; list pages subscribe to every event and swap in their list from a fresh copy of the page
// (the server escapes everything; this script never builds HTML from data).
"use strict";

(function () {
  function debounce(fn, ms) {
    let timer = null;
    return function () {
      if (timer !== null) return;
      timer = setTimeout(function () { timer = null; fn(); }, ms);
    };
  }

  function liveRegion(region) {
    const source = region.dataset.liveSrc;
    const events = region.dataset.events;
    let stream = null;
    let poller = null;
    let inFlight = false;
    let again = false;

    async function refresh() {
      if (inFlight) { again = true; return; }
      inFlight = true;
      try {
        const response = await fetch(source, { headers: { "accept": "text/html" }, credentials: "same-origin" });
        if (response.ok) {
          const opened = new Set(Array.from(region.querySelectorAll("details[open]"), function (d) { return d.dataset.step; }));
          region.innerHTML = await response.text();
          region.querySelectorAll("details[data-step]").forEach(function (d) {
            if (opened.has(d.dataset.step)) d.open = true;
          });
          const status = region.querySelector("#run-status");
          if (status && status.dataset.status !== "started") {
            if (stream !== null) { stream.close(); stream = null; }
            if (poller !== null) { clearInterval(poller); poller = null; }
            region.dataset.live = "no";
          }
        }
      } finally {
        inFlight = false;
        if (again) { again = false; refresh(); }
      }
    }

    const soon = debounce(refresh, 150);
    if (region.dataset.live !== "yes") return;
    // Events come from NOTIFY on the realtime shim's channel; where Supabase's realtime
    // replaces the shim there are none, so a slow poll keeps the page moving anyway.
    poller = setInterval(soon, 10000);
    if (!window.EventSource) return;
    stream = new EventSource(events);
    stream.addEventListener("ready", soon);
    stream.addEventListener("change", soon);
  }

  // A list page (overview, runs, workers, schedules): on any event, fetch this same URL again
  // and swap in the region with the same id from the fresh page. At most one refresh a second,
  // however busy the database is.
  function livePage(region) {
    let inFlight = false;
    let again = false;

    async function refresh() {
      if (inFlight) { again = true; return; }
      inFlight = true;
      try {
        const response = await fetch(window.location.href, { headers: { "accept": "text/html" }, credentials: "same-origin" });
        if (response.ok) {
          const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById(region.id);
          if (fresh !== null) {
            region.innerHTML = fresh.innerHTML;
            region.dataset.refreshed = String(Number(region.dataset.refreshed || "0") + 1);
          }
        }
      } finally {
        inFlight = false;
        if (again) { again = false; soon(); }
      }
    }

    const soon = debounce(refresh, 1000);
    // Some changes send no event (worker heartbeats; Supabase's realtime instead of the shim):
    // those pages also poll.
    const every = Number(region.dataset.poll || "0");
    if (every > 0) setInterval(soon, every);
    if (!window.EventSource || !region.dataset.events) return;
    const stream = new EventSource(region.dataset.events);
    stream.addEventListener("change", soon);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-src]").forEach(liveRegion);
    document.querySelectorAll("[data-live-page]").forEach(livePage);
  });
})();
