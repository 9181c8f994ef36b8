// Upload progress for the import form (htmx posts it; a plain POST still works without JS).
"use strict";
(() => {
  const uploadForm = (event) => event.target.closest && event.target.closest("form[data-upload]");

  document.addEventListener("htmx:beforeRequest", (event) => {
    const form = uploadForm(event);
    if (!form) return;
    const bar = form.querySelector("progress");
    bar.value = 0;
    bar.hidden = false;
    form.querySelector("button[type=submit]").setAttribute("aria-busy", "true");
  });

  document.addEventListener("htmx:xhr:progress", (event) => {
    const form = uploadForm(event);
    if (!form || !event.detail.lengthComputable) return;
    const bar = form.querySelector("progress");
    bar.max = event.detail.total;
    bar.value = event.detail.loaded;
  });

  // An upload whose every file was rejected answers 400 with the report: show it, as for 200.
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (uploadForm(event) && event.detail.xhr.status === 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("htmx:afterRequest", (event) => {
    const form = uploadForm(event);
    if (!form) return;
    form.querySelector("progress").hidden = true;
    form.querySelector("button[type=submit]").removeAttribute("aria-busy");
    if (event.detail.successful || event.detail.xhr.status === 400) form.reset();
  });
})();
