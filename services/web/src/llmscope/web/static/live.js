// Live updates (issue 13: an idle tab costs nothing). While the page's event stream (/events) is
// open, the fragments' slow fallback polls stand still: their hx-trigger filter reads
// window.llmscopeLive. When the stream breaks they poll again, and when it comes back one
// "live-resumed" event on the body makes every live fragment re-read what it missed.
// Written for LLMscope, no dependency, no network.
(function () {
  "use strict";
  var dropped = false;
  document.addEventListener("htmx:sseOpen", function () {
    window.llmscopeLive = true;
    if (dropped) {
      dropped = false;
      htmx.trigger(document.body, "live-resumed");
    }
  });
  function down() {
    window.llmscopeLive = false;
    dropped = true;
  }
  document.addEventListener("htmx:sseError", down);
  document.addEventListener("htmx:sseClose", down);
})();
