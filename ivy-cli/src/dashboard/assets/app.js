// Ivy dashboard: swaps in the parts the server sends over one event stream. The HTML is
// rendered and escaped by the server; this script only places it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var callPage = document.querySelector("[data-call-page]");
  var refetching = false;

  function state(text, cls) {
    if (!live) return;
    live.textContent = text;
    live.className = "live " + cls;
  }

  function refetchCall() {
    if (!callPage || refetching) return;
    refetching = true;
    var id = callPage.getAttribute("data-call-page");
    fetch("/calls/" + encodeURIComponent(id) + "?part=1", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) callPage.innerHTML = html; })
      .finally(function () { refetching = false; });
  }

  // A browser gives one host six HTTP/1.1 connections: a page left behind (kept in the
  // back/forward cache) must not hold one, or a few visited pages block the next request.
  var source = null;
  function connect() {
    if (source) return;
    source = new EventSource("/events");
    source.onopen = function () { state("live", "on"); };
    source.onerror = function () { state("reconnecting…", "off"); };
    ["queues", "workers", "calls", "dead", "status"].forEach(function (name) {
      source.addEventListener(name, function (e) {
        var el = document.querySelector('[data-part="' + name + '"]');
        if (el) el.innerHTML = e.data;
        if (name === "calls" || name === "dead") refetchCall();
      });
    });
  }
  window.addEventListener("pagehide", function () {
    if (source) source.close();
    source = null;
  });
  window.addEventListener("pageshow", connect);
  connect();

  // The message of a replay or purge goes away after a while, and from the address bar.
  var flash = document.querySelector(".flash");
  if (flash && window.history.replaceState) {
    window.history.replaceState(null, "", "/");
    setTimeout(function () { flash.classList.add("gone"); }, 8000);
  }
})();
