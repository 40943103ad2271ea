// Charts are drawn on the server for the reader's viewport (a phone's narrower, so its text stays
// legible at the card's width): this keeps the viewport's width in a cookie the server reads
// (llmscope.web.pages.chart_width). After a large resize (a phone turned, a window narrowed),
// every live fragment re-reads once, drawn for the new width.
//
// A device's first page comes before the cookie does: its charts are drawn for a laptop. Where
// that shrinks them below legible (a phone), they stay hidden (style.css's .vw-redraw) while the
// page's content is read once more, now with the cookie, and swapped in by htmx: the reader never
// sees the shrunken charts, and the page is not loaded twice. The same when the cookie was stale
// (a window widened, or a phone turned, and a link followed before the resize was saved): a chart
// drawn for 390 px and shown at 1366 px had its 11-px labels at 35 px.
// Written for LLMscope, no dependency, no network.
(function () {
  "use strict";
  var CHARTS = "svg.control-chart, svg.comparison-chart, svg.availability-chart, svg.mini-chart";
  var LEGIBLE = 0.9;  // pages.CHART_SCALE: the least a chart is shrunk to fit its card
  var WIDEST = 960;  // pages.CHART_WIDTH: a wide screen scales it up, by design
  var COOKIE = /(?:^|;\s*)llmscope_vw=(\d*)/;
  var saved = 0;
  function save() {
    saved = Math.round(window.innerWidth);
    document.cookie = "llmscope_vw=" + saved + "; path=/; max-age=31536000; SameSite=Lax";
  }
  var had = COOKIE.exec(document.cookie);
  save();
  // Drawn for another width than this page's: shrunk below legible, or a narrow drawing
  // scaled up past what a drawing for this width would be (1 / LEGIBLE).
  function misdrawn(svg) {
    var shown = svg.getBoundingClientRect().width, drawn = svg.viewBox.baseVal.width;
    return shown > 0 && (shown < LEGIBLE * drawn || (drawn < WIDEST && LEGIBLE * shown > drawn));
  }
  // Without cookies the second read would be drawn as the first: no redraw then. With the
  // cookie already of this width, nothing would be drawn otherwise: none either.
  if ((!had || +had[1] !== saved) && COOKIE.test(document.cookie) && window.htmx) {
    var root = document.documentElement;
    root.classList.add("vw-redraw");
    document.addEventListener("DOMContentLoaded", function () {
      var main = document.getElementById("main");
      var redraw = [].some.call(document.querySelectorAll(CHARTS), misdrawn);
      if (!redraw || !main) {
        root.classList.remove("vw-redraw");
        return;
      }
      var done = function () { root.classList.remove("vw-redraw"); };
      htmx.ajax("GET", location.pathname + location.search, { target: main, swap: "innerHTML" })
        .then(done, done);
    });
  }
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
