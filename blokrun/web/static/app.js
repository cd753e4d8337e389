// blokrun dashboard: keeps an open page current by polling the JSON API every 2 s.
// Everything from the API is put on the page with textContent, never as HTML.
(function () {
  "use strict";
  var body = document.body;
  var root = body.getAttribute("data-root") || "";
  var what = body.getAttribute("data-refresh");
  function get(url, then) {
    fetch(root + url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { then(data); } })
      .catch(function () {});
  }
  function refreshRuns() {
    var rows = document.querySelectorAll("#runs tbody tr");
    get("/api/runs" + location.search, function (data) {
      var byId = {};
      data.runs.forEach(function (r) { byId[r.request_id] = r; });
      rows.forEach(function (tr) {
        var id = tr.cells[0].textContent;
        var r = byId[id];
        if (!r) { return; }
        tr.cells[2].textContent = r.status;
        tr.cells[3].textContent = r.stopped_at || r.last_done || "";
        tr.cells[7].textContent = (r.error || "").slice(0, 200);
        tr.className = "st-" + r.status;
      });
    });
  }
  function refreshRun() {
    var el = document.getElementById("status");
    if (!el) { return; }
    var id = decodeURIComponent(location.pathname.split("/runs/")[1] || "");
    get("/api/runs/" + encodeURIComponent(id), function (run) {
      if (run.status !== el.textContent) {
        el.textContent = run.status;
        el.className = "st-" + run.status;
        if (["completed", "failed", "suspended", "dead", "sleeping"].indexOf(run.status) >= 0) {
          location.reload();  // the timeline and state changed too
        }
      }
    });
  }
  if (what === "runs") { setInterval(refreshRuns, 2000); }
  if (what === "run") { setInterval(refreshRun, 2000); }
})();
