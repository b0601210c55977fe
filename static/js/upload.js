// Upload page: sends the form by XHR so the page can show the upload's own
// progress (htmx reports upload and download progress as one event, which
// makes the bar jump back at the end). Without JavaScript the form posts as is.
(function () {
  "use strict";

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    var units = ["KB", "MB", "GB", "TB"];
    var i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + " " + units[i];
  }

  function bind(form) {
    if (!form || form.dataset.bound) return;
    form.dataset.bound = "1";
    form.addEventListener("submit", function (event) {
      var input = form.querySelector('input[type="file"]');
      var file = input && input.files && input.files[0];
      if (!file) return; // let the server say what is missing
      event.preventDefault();
      send(form, file);
    });
  }

  function send(form, file) {
    var box = form.querySelector("#upload-progress");
    var bar = form.querySelector("#upload-bar");
    var status = form.querySelector("#upload-status");
    var button = form.querySelector("#upload-button");
    var max = parseInt(form.dataset.maxBytes || "0", 10);

    box.hidden = false;
    if (max && file.size > max) {
      bar.value = 0;
      status.textContent = "“" + file.name + "” is " + formatBytes(file.size) + "; the limit is " +
        form.dataset.maxText + ". Split the scans into several uploads.";
      return;
    }

    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    // The server answers an XHR with a redirect header or the form partial.
    xhr.setRequestHeader("HX-Request", "true");
    button.disabled = true;
    status.textContent = "Uploading " + file.name + "…";

    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var pct = Math.floor((e.loaded / e.total) * 100);
      bar.value = pct;
      bar.textContent = pct + " %";
      status.textContent = "Uploading " + file.name + ": " + formatBytes(e.loaded) + " of " +
        formatBytes(e.total) + " (" + pct + " %)";
    });
    xhr.upload.addEventListener("load", function () {
      bar.value = 100;
      status.textContent = "Upload complete. Checking the file…";
    });
    xhr.addEventListener("load", function () {
      var target = xhr.getResponseHeader("HX-Redirect");
      if (xhr.status >= 200 && xhr.status < 300 && target) {
        window.location.assign(target);
        return;
      }
      var type = xhr.getResponseHeader("Content-Type") || "";
      if (type.indexOf("text/html") === 0 && xhr.responseText.indexOf('id="upload-form"') !== -1) {
        // The server refused the upload and re-rendered the form with the reason.
        var holder = document.createElement("div");
        holder.innerHTML = xhr.responseText;
        var fresh = holder.querySelector("#upload-form");
        form.replaceWith(fresh);
        bind(fresh);
        var errors = fresh.querySelector("#upload-errors");
        if (errors) {
          errors.setAttribute("tabindex", "-1");
          errors.focus();
        }
        return;
      }
      button.disabled = false;
      status.textContent = "The server answered " + xhr.status + " " + xhr.statusText + ". Try again.";
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      status.textContent = "The connection was lost during the upload. Try again.";
    });
    xhr.send(new FormData(form));
  }

  document.addEventListener("DOMContentLoaded", function () {
    bind(document.getElementById("upload-form"));
  });
})();
