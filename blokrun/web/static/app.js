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
    // one head read per row shown (not a listing of every run): O(page), whatever is stored
    var rows = document.querySelectorAll("#runs tbody tr");
    if (!rows.length) { return; }
    var query = [];
    rows.forEach(function (tr) { query.push("id=" + encodeURIComponent(tr.cells[0].textContent)); });
    get("/api/statuses?" + query.join("&"), function (byId) {
      rows.forEach(function (tr) {
        var r = byId[tr.cells[0].textContent];
        if (!r) { return; }
        tr.cells[2].textContent = r.status;
        tr.cells[3].textContent = r.step || "";
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
