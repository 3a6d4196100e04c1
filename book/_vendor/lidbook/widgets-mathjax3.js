/* The book's own glue (not vendored): lets the static widget manager typeset widget labels with
 * MathJax 3.  @jupyter-widgets' description labels call the MathJax 2 API,
 * `MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])`, whenever `window.MathJax` exists; with
 * MathJax 3 (which has no `Hub`) that throws "Cannot read properties of undefined (reading 'Queue')"
 * once per widget.  The widget manager renders on window `load`; MathJax (a deferred script) is
 * defined before DOMContentLoaded, so installing the shim then is early enough.
 * Loaded before embed.js through myst-nb's `nb_ipywidgets_js` in _config.yml. */
(function () {
  "use strict";
  function typeset(element) {
    var mj = window.MathJax;
    var ready = mj && mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
    ready.then(function () {
      var m = window.MathJax;
      return m && m.typesetPromise ? m.typesetPromise([element]) : null;
    }).catch(function (err) {
      console.error("MathJax could not typeset a widget label:", err);
    });
  }
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) {
      return;
    }
    mj.Hub = {
      Queue: function () {
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
            typeset(job[2]);
          }
        }
      }
    };
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install);
  } else {
    install();
  }
})();
