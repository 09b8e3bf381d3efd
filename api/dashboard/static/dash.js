// The dashboard's progressive JavaScript: every page works without it; with it, the
// campaign chart draws and follows new activity, the content editor previews, the sandbox
// inbox refreshes, and an import shows its progress.
"use strict";

function drawChart(el) {
  var chart = null;
  var totals = document.getElementById("chart-totals");
  function load() {
    fetch(el.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        var s = data.series;
        var cols = [[], [], [], [], [], [], []];
        s.forEach(function (p) {
          cols[0].push(Date.parse(p.bucket) / 1000);
          cols[1].push(p.sent); cols[2].push(p.delivered);
          cols[3].push(p.opened); cols[4].push(p.clicked);
          cols[5].push(p.bounced); cols[6].push(p.complained);
        });
        var o = data.overview;
        totals.textContent = "sent " + o.sent + " · delivered " + o.delivered + " · opened " +
          o.opened + " · clicked " + o.clicked + " · replied " + o.replied + " · bounced " +
          o.bounced + " · complained " + o.complained;
        el.dataset.opened = o.opened;
        el.dataset.clicked = o.clicked;
        if (typeof uPlot === "undefined") { return; }
        if (chart) { chart.setData(cols); return; }
        var width = Math.max(280, Math.min(el.clientWidth || 800, 960));
        chart = new uPlot({
          width: width, height: 260,
          series: [
            {},
            { label: "Sent", stroke: "#555" },
            { label: "Delivered", stroke: "#1b6e3a" },
            { label: "Opened", stroke: "#0b5cad" },
            { label: "Clicked", stroke: "#8a3ab9" },
            { label: "Bounced", stroke: "#b3261e" },
            { label: "Complained", stroke: "#a15c00" }
          ],
          scales: { x: { time: true, range: function () {
            var now = Date.now() / 1000; return [now - 48 * 3600, now + 3600]; } } },
          axes: [{}, {}]
        }, cols, el);
      })
      .catch(function () { totals.textContent = "The chart could not be loaded."; });
  }
  load();
  setInterval(load, 3000);
}

function previewEditor(form) {
  var frame = document.getElementById("preview");
  var subject = document.getElementById("preview-subject");
  function render(text, name) {
    return text.replace(/\{\{\s*first_name\s*\}\}/g, name);
  }
  function update() {
    var first = (form.recipients.value.split("\n")[0] || "").split(",");
    var name = (first[1] || "there").trim();
    subject.textContent = render(form.subject.value, name);
    frame.srcdoc = render(form.html.value, name);
  }
  form.addEventListener("input", update);
  update();
}

// "Check content" posts the editor to the content analysis and swaps in its findings,
// without leaving the page (without the script, the button submits and the page returns).
function analyseContent(form, button) {
  button.addEventListener("click", function (event) {
    event.preventDefault();
    var section = document.getElementById("findings");
    section.setAttribute("aria-busy", "true");
    fetch(button.formAction, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("findings");
        if (fresh) { section.replaceWith(document.adoptNode(fresh)); }
      })
      .catch(function () { section.textContent = "The analysis could not be loaded."; })
      .finally(function () { section.removeAttribute("aria-busy"); });
  });
}

// The CSV import uploads through XMLHttpRequest so the bar counts the bytes sent; the
// answer (the report and the list) replaces the page's main part, as a reload would.
function importWithProgress(form) {
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var bar = document.getElementById("import-progress");
    var label = document.getElementById("import-status");
    var xhr = new XMLHttpRequest();
    bar.hidden = false;
    bar.value = 0;
    bar.max = 100;
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) { return; }
      bar.value = Math.round(e.loaded * 100 / e.total);
      label.textContent = "Uploaded " + bar.value + "%";
    });
    xhr.upload.addEventListener("load", function () {
      bar.value = 100;
      label.textContent = "Uploaded; checking every row";
    });
    xhr.addEventListener("load", function () {
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var main = doc.getElementById("main");
      if (!main) { label.textContent = "The import failed (HTTP " + xhr.status + ")."; return; }
      document.getElementById("main").replaceWith(document.adoptNode(main));
      document.getElementById("import-status").textContent = "Uploaded " + bar.value + "%";
      var again = document.getElementById("import-form");
      if (again) { importWithProgress(again); }
    });
    xhr.addEventListener("error", function () { label.textContent = "The upload failed."; });
    xhr.open("POST", form.action);
    xhr.send(new FormData(form));
  });
}

function refreshInbox(table) {
  setInterval(function () {
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("#inbox tbody");
        if (fresh) { table.tBodies[0].replaceWith(document.adoptNode(fresh)); }
      });
  }, Number(table.dataset.refresh) * 1000);
}

function checkLinks(list) {
  var frame = document.getElementById(list.dataset.for);
  if (!frame) { list.textContent = "No html part."; return; }
  var doc = new DOMParser().parseFromString(frame.getAttribute("srcdoc"), "text/html");
  doc.querySelectorAll("a[href]").forEach(function (a) {
    var li = document.createElement("li");
    li.textContent = a.textContent.trim() + " → " + a.getAttribute("href");
    list.appendChild(li);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  var chart = document.getElementById("chart");
  if (chart) { drawChart(chart); }
  var form = document.getElementById("campaign-form");
  if (form) { previewEditor(form); }
  var analyse = document.getElementById("analyse");
  if (form && analyse) { analyseContent(form, analyse); }
  var inbox = document.getElementById("inbox");
  if (inbox) { refreshInbox(inbox); }
  var links = document.getElementById("link-check");
  if (links) { checkLinks(links); }
  var upload = document.getElementById("import-form");
  if (upload) { importWithProgress(upload); }
});
