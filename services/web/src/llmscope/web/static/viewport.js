// Charts are drawn on the server for the reader's viewport (a phone's narrower, so its text stays
// legible at the card's width): this keeps the viewport's width in a cookie the server reads
// (llmscope.web.pages.chart_width). After a large resize (a phone turned, a window narrowed),
// every live fragment re-reads once, drawn for the new width.
// Written for LLMscope, no dependency, no network.
(function () {
  "use strict";
  var saved = 0;
  function save() {
    saved = Math.round(window.innerWidth);
    document.cookie = "llmscope_vw=" + saved + "; path=/; max-age=31536000; SameSite=Lax";
  }
  save();
  var timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var before = saved;
      save();
      if (Math.abs(saved - before) > 0.2 * before && window.htmx && document.body) {
        htmx.trigger(document.body, "live-resumed");
      }
    }, 250);
  });
})();
