// Toasts: a route answers an action with `HX-Trigger: {"toast": {"message": ..., "level": ...}}`
// and htmx fires a "toast" event here; a failed request (4xx/5xx htmx did not swap, or no
// answer) gets an error toast. Written for LLMscope, no dependency, no network.
(function () {
  "use strict";
  function region() {
    var el = document.getElementById("toasts");
    if (!el) {
      el = document.createElement("div");
      el.id = "toasts";
      el.setAttribute("role", "status");
      el.setAttribute("aria-live", "polite");
      document.body.appendChild(el);
    }
    return el;
  }
  function show(message, level) {
    var toast = document.createElement("div");
    toast.className = "toast " + (level === "error" ? "toast-error" : "toast-ok");
    toast.textContent = message;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { toast.remove(); });
    toast.appendChild(close);
    region().appendChild(toast);
    // Errors stay until dismissed: someone has to read them.
    if (level !== "error") { setTimeout(function () { toast.remove(); }, 6000); }
  }
  window.llmscopeToast = show;
  document.addEventListener("toast", function (e) {
    var d = e.detail || {};
    if (d.message) { show(String(d.message), d.level); }
  });
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    show("The server answered " + xhr.status + " " + (xhr.statusText || "") + ": nothing was changed.", "error");
  });
  document.addEventListener("htmx:sendError", function () {
    show("No answer from the server: nothing was changed.", "error");
  });
})();
