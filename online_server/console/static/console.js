// featurestore console: draws the quality chart from the JSON the page embeds, and submits
// the sign-in form as JSON (the server accepts JSON bodies only). No other script runs.
(function () {
  "use strict";
  var COLORS = ["#4263eb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f59f00", "#c92a2a", "#5c940d"];

  function drawQuality() {
    var holder = document.getElementById("quality-chart");
    var source = document.getElementById("quality-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var chart = JSON.parse(source.textContent);
    var data = [chart.x];
    var series = [{}];
    var color = 0;
    chart.series.forEach(function (s) {
      var c = COLORS[Math.floor(color / 2) % COLORS.length];
      color += 1;
      data.push(s.values);
      series.push({ label: s.label, stroke: c, width: s.dash ? 1.5 : 2, dash: s.dash ? [6, 4] : undefined,
                    spanGaps: true, points: { show: true, size: 5 } });
    });
    var width = Math.max(480, Math.min(1100, holder.parentElement.clientWidth - 40));
    var plot = new uPlot({ width: width, height: 320, series: series,
      axes: [{}, { label: chart.metric, size: 60 }], scales: { x: { time: true } } }, data, holder);
    holder.setAttribute("data-series", String(chart.series.length));
    holder.setAttribute("data-rendered", "true");
    window.qualityPlot = plot;
  }

  function login() {
    var form = document.getElementById("login-form");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var token = document.getElementById("token").value;
      var error = document.getElementById("login-error");
      fetch(form.getAttribute("data-url"), { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token }) })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (res.ok) { window.location.assign(form.getAttribute("data-next")); return; }
          error.textContent = res.body.error.message + (res.body.error.hint ? " (" + res.body.error.hint + ")" : "");
          error.hidden = false;
        });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawQuality(); login(); });
})();
