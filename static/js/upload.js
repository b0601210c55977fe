// Upload page: sends the file through tus (the vendored tus-js-client, to
// /api/uploads/) in chunks, so an upload survives a dropped connection, a
// server restart, a pause and a reload of the page. The batch exists from the
// first request (its id comes back in Upload-Batch-Id, and the server
// publishes the `uploading` stage into the batch's event stream); when the
// last byte is in, the page goes to the batch's page, which follows the rest.
// Without JavaScript, or without tus support, the form posts as it is.
(function () {
  "use strict";

  // Long enough to ride out a server restart (about two and a half minutes of
  // trying); tus-js-client starts the count again after every stored chunk.
  var RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 10000, 15000, 20000, 30000, 60000];
  // SubtleCrypto digests a whole ArrayBuffer, so the file has to fit in
  // memory: larger files go without a whole-file checksum.
  var CHECKSUM_MAX_BYTES = 200 * 1024 * 1024;
  var SPEED_WINDOW_MS = 5000;
  var BATCH_PLACEHOLDER = "00000000-0000-0000-0000-000000000000";

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    var units = ["KB", "MB", "GB", "TB"];
    var i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + " " + units[i];
  }

  function formatDuration(seconds) {
    if (seconds < 60) return Math.max(1, Math.round(seconds)) + " s";
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function formatWhen(text) {
    var date = new Date(text);
    if (isNaN(date.getTime())) return "earlier";
    return date.toLocaleString([], {day: "numeric", month: "short", hour: "2-digit", minute: "2-digit"});
  }

  function percent(done, total) {
    return total ? Math.floor((done / total) * 100) : 0;
  }

  // The server's words as a sentence (not capitalised: they may start with a file name).
  function sentence(text) {
    text = String(text || "").trim();
    return !text || /[.!?]$/.test(text) ? text : text + ".";
  }

  function toHex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }

  // What went wrong, in the server's words when it gave any ({"error": ...}).
  function errorText(err) {
    var res = err && err.originalResponse;
    if (!res) return "The server could not be reached.";
    try {
      var data = JSON.parse(res.getBody() || "");
      if (data && data.error) return sentence(data.error);
    } catch (e) { /* not JSON: fall through */ }
    return "The server answered " + res.getStatus() + ".";
  }

  function bind(form) {
    if (!form || form.dataset.bound || !window.tus || !window.tus.isSupported) return;
    form.dataset.bound = "1";
    var tus = window.tus;
    var byId = function (id) { return form.querySelector("#" + id); };
    var input = form.querySelector('input[type="file"]');
    var submit = byId("upload-button");
    var box = byId("upload-progress");
    var bar = byId("upload-bar");
    var status = byId("upload-status");
    var figures = byId("upload-figures");
    var pauseButton = byId("upload-pause");
    var resumeButton = byId("upload-resume");
    var problem = byId("upload-problem");
    var offer = byId("resume-offer");
    var unfinished = byId("unfinished-uploads");
    var storage = tus.defaultOptions.urlStorage;

    var endpoint = new URL(form.dataset.tusEndpoint, window.location.href).href;
    var chunkSize = parseInt(form.dataset.chunkSize || "0", 10) || 8 * 1024 * 1024;
    var maxBytes = parseInt(form.dataset.maxBytes || "0", 10);
    var user = form.dataset.user || "";
    var csrf = form.querySelector('input[name="csrfmiddlewaretoken"]').value;
    // tus-js-client keeps "tus::<fingerprint>::<n>" in localStorage: ours start so.
    var storagePrefix = "tus::omr-" + user + "-";

    var upload = null;      // the tus.Upload being sent
    var running = false;    // a request is out or a retry is due (not paused, not failed)
    var previous = null;    // an unfinished upload of the chosen file, offered for resuming
    var batchId = "";
    var fileName = "";
    var total = 0;
    var stored = 0;         // bytes the server said it holds (Upload-Offset)
    var samples = [];       // [time, bytes sent] of the last few seconds, for the speed

    // Per user and file (tus-js-client's default fingerprint plus the user),
    // so another login in this browser is never offered someone else's upload.
    function fingerprint(file) {
      return Promise.resolve(["omr", user, file.name, file.type, file.size, file.lastModified, endpoint].join("-"));
    }

    function options(metadata) {
      return {
        endpoint: endpoint,
        chunkSize: chunkSize,
        retryDelays: RETRY_DELAYS,
        storeFingerprintForResuming: true,
        removeFingerprintOnSuccess: true,
        fingerprint: fingerprint,
        metadata: metadata,
        headers: {"X-CSRFToken": csrf},  // the session login's CSRF check
        onAfterResponse: function (_req, res) {
          var id = res.getHeader("Upload-Batch-Id");
          if (id) batchId = id;
          var offset = parseInt(res.getHeader("Upload-Offset"), 10);
          if (!isNaN(offset)) stored = offset;
        },
        onProgress: onProgress,
        onShouldRetry: onShouldRetry,
        onSuccess: onSuccess,
        onError: onError
      };
    }

    // ------------------------------------------------------------ what the page shows

    function setState(text) {
      if (status.textContent !== text) status.textContent = text;  // a live region: only changes
    }

    function showButtons(which) {
      pauseButton.hidden = which !== "pause";
      resumeButton.hidden = which !== "resume";
    }

    function showBar(done) {
      var pct = percent(done, total);
      bar.value = pct;
      bar.textContent = pct + " %";
    }

    function showProblem(heading, message) {
      problem.textContent = "";
      var head = document.createElement("p");
      head.appendChild(document.createElement("strong")).textContent = heading;
      var list = document.createElement("ul");
      list.className = "errorlist";
      var item = document.createElement("li");
      item.textContent = message;
      list.appendChild(item);
      problem.appendChild(head);
      problem.appendChild(list);
      problem.hidden = false;
      problem.setAttribute("tabindex", "-1");
      problem.focus();
    }

    function lock(locked) {
      submit.disabled = locked;
      input.disabled = locked;
      Array.prototype.forEach.call(form.querySelectorAll("select, input[type=radio]"), function (field) {
        field.disabled = locked;
      });
    }

    function onProgress(sent, size) {
      total = size;
      var now = Date.now();
      var last = samples[samples.length - 1];
      if (last && sent < last[1]) samples = [];  // a chunk sent again after a retry
      samples.push([now, sent]);
      while (samples.length > 2 && now - samples[0][0] > SPEED_WINDOW_MS) samples.shift();
      showBar(sent);
      setState("Uploading " + fileName + "…");
      var text = formatBytes(sent) + " of " + formatBytes(size) + " sent (" + percent(sent, size) + " %)";
      var first = samples[0];
      var seconds = (now - first[0]) / 1000;
      if (seconds >= 1 && sent > first[1]) {
        var speed = (sent - first[1]) / seconds;
        text += " · " + formatBytes(speed) + "/s · about " + formatDuration((size - sent) / speed) + " left";
      }
      figures.textContent = text;
    }

    // tus-js-client's own rule (retry unless a 4xx other than 409 or 423),
    // plus: no retry of an upload the server has failed; and say so on the page.
    function onShouldRetry(err, attempt, opts) {
      var code = err.originalResponse ? err.originalResponse.getStatus() : 0;
      var retry = !(code >= 400 && code < 500) || code === 409 || code === 423;
      if (code === 409 && /upload failed/.test(errorText(err))) retry = false;
      if (navigator.onLine === false) retry = false;  // onError waits for the connection instead
      if (retry) {
        samples = [];
        var delay = opts.retryDelays[attempt] || 0;
        var when = delay ? "in " + formatDuration(delay / 1000) : "now";
        setState((code ? "The server answered " + code + "." : "The connection to the server was lost.") +
                 " Trying again " + when + " (attempt " + (attempt + 1) + " of " + opts.retryDelays.length + ")…");
        showBar(stored);
        figures.textContent = formatBytes(stored) + " of " + formatBytes(total) + " are on the server.";
      }
      return retry;
    }

    function onSuccess() {
      running = false;
      showBar(total);
      showButtons("");
      setState("Upload complete. Opening the batch's page…");
      figures.textContent = formatBytes(total) + " sent.";
      var list = form.querySelector(".form-actions a");
      window.location.assign(batchId ? form.dataset.batchUrl.replace(BATCH_PLACEHOLDER, batchId) : list.href);
    }

    function onError(err) {
      running = false;
      samples = [];
      if (navigator.onLine === false) {
        setState("This computer is offline. The upload carries on when the connection is back.");
        showButtons("resume");
        window.addEventListener("online", function () { if (!running && upload) resume(); }, {once: true});
        return;
      }
      var message = errorText(err);
      var code = err.originalResponse ? err.originalResponse.getStatus() : 0;
      if (!upload.url || (code >= 400 && code < 500 && code !== 409 && code !== 423) || /upload failed/.test(message)) {
        // Refused (wrong kind of file, over the limit, a bad template, a failed
        // checksum, expired...): resuming would get the same answer.
        box.hidden = true;
        lock(false);
        upload = null;
        showButtons("");
        showProblem(code ? "The upload was refused." : "The upload could not start.", message);
        return;
      }
      // The server stayed away through every retry, or refused for now: the
      // upload stays resumable from what the server holds.
      showBar(stored);
      setState("The upload stopped: " + message + " Press Resume to try again.");
      figures.textContent = formatBytes(stored) + " of " + formatBytes(total) + " are on the server.";
      showButtons("resume");
    }

    // ------------------------------------------------------------ starting, pausing, resuming

    function begin(next, file) {
      upload = next;
      fileName = file.name;
      total = file.size;
      samples = [];
      running = true;
      offer.hidden = true;
      unfinished.hidden = true;
      setState("Uploading " + file.name + "…");
      showButtons("pause");
      upload.start();
    }

    function checksum(file) {
      if (file.size > CHECKSUM_MAX_BYTES || !(window.crypto && window.crypto.subtle)) return Promise.resolve("");
      setState("Computing the file's SHA-256, so the server can check what arrives…");
      return file.arrayBuffer()
        .then(function (data) { return window.crypto.subtle.digest("SHA-256", data); })
        .then(toHex, function () { return ""; });
    }

    function startNew(file) {
      problem.hidden = true;
      box.hidden = false;
      showBar(0);
      figures.textContent = "";
      if (maxBytes && file.size > maxBytes) {
        setState("“" + file.name + "” is " + formatBytes(file.size) + "; the limit is " +
                 form.dataset.maxText + ". Split the scans into several uploads.");
        return;
      }
      lock(true);
      var metadata = {
        filename: file.name,
        filetype: file.type || "application/octet-stream",
        template: form.elements.template.value,
        has_qr: form.elements.has_qr.value || "true"
      };
      // An exam brings its own template (the select follows it, see below).
      if (form.elements.exam && form.elements.exam.value) metadata.exam = form.elements.exam.value;
      checksum(file).then(function (digest) {
        if (digest) metadata.sha256 = digest;
        begin(new tus.Upload(file, options(metadata)), file);
      });
    }

    function resumePrevious(file) {
      var entry = previous;
      previous = null;
      submit.textContent = "Upload and read";
      problem.hidden = true;
      box.hidden = false;
      stored = entry.offset;
      total = file.size;
      showBar(stored);
      figures.textContent = formatBytes(stored) + " of " + formatBytes(total) + " are on the server.";
      lock(true);
      var next = new tus.Upload(file, options(entry.metadata || {}));
      next.resumeFromPreviousUpload(entry);
      begin(next, file);
      setState("Resuming " + file.name + "…");
    }

    function pause() {
      if (!upload || !running) return;
      running = false;
      upload.abort();
      samples = [];
      showBar(stored);
      setState("Paused at " + percent(stored, total) + " %. Press Resume to carry on from there.");
      figures.textContent = formatBytes(stored) + " of " + formatBytes(total) + " are on the server.";
      showButtons("resume");
      resumeButton.focus();
    }

    function resume() {
      if (!upload || running) return;
      running = true;
      setState("Resuming " + fileName + "…");
      showButtons("pause");
      pauseButton.focus();
      upload.start();  // asks the server for its offset (HEAD), then goes on from there
    }

    // ------------------------------------------------------------ unfinished uploads from before

    // An unfinished upload still on the server: {offset, length, ...entry}, or
    // null (and forgotten when the server no longer has it or has all of it).
    function probe(entry) {
      return fetch(entry.uploadUrl, {method: "HEAD", headers: {"Tus-Resumable": "1.0.0"},
                                     credentials: "same-origin", cache: "no-store"})
        .then(function (res) {
          var offset = parseInt(res.headers.get("Upload-Offset"), 10);
          var length = parseInt(res.headers.get("Upload-Length"), 10);
          if (res.ok && offset < length) return Object.assign({}, entry, {offset: offset, length: length});
          if (res.ok || res.status === 404 || res.status === 410) storage.removeUpload(entry.urlStorageKey);
          return null;
        }, function () { return null; });  // the server is away: keep the entry for next time
    }

    function describe(hit) {
      var meta = hit.metadata || {};
      var how = meta.has_qr === "false" ? "pages in file order" : "pages sorted by QR code";
      return formatBytes(hit.offset) + " of " + formatBytes(hit.length) + " (" + percent(hit.offset, hit.length) +
        " %) reached the server, started " + formatWhen(hit.creationTime) +
        (meta.template ? " with template " + meta.template + ", " + how : "");
    }

    // The form shows what a resumed upload will use: the choices made when it began.
    function showChoices(meta) {
      var template = form.elements.template;
      if (meta.template && template.querySelector('option[value="' + CSS.escape(meta.template) + '"]')) {
        template.value = meta.template;
      }
      if (meta.has_qr === "true" || meta.has_qr === "false") {
        var radio = form.querySelector('input[name="has_qr"][value="' + meta.has_qr + '"]');
        if (radio) radio.checked = true;
      }
    }

    function lookForPrevious(file) {
      previous = null;
      offer.hidden = true;
      submit.textContent = "Upload and read";
      if (!file || running || upload) return;
      new tus.Upload(file, options({})).findPreviousUploads()
        .then(function (found) {
          found.sort(function (a, b) { return new Date(b.creationTime) - new Date(a.creationTime); });
          var next = function (i) {
            if (i >= found.length) return null;
            return probe(found[i]).then(function (hit) { return hit || next(i + 1); });
          };
          return next(0);
        })
        .then(function (hit) {
          if (!hit || running || upload || input.files[0] !== file) return;
          previous = hit;
          byId("resume-text").textContent = "This file was partly uploaded before: " + describe(hit) +
            ". Resuming sends only the rest, and keeps the choices made then.";
          showChoices(hit.metadata || {});
          offer.hidden = false;
          unfinished.hidden = true;
          submit.textContent = "Resume upload";
        });
    }

    function listUnfinished() {
      if (!storage || typeof storage.findAllUploads !== "function") return;
      storage.findAllUploads()
        .then(function (all) {
          var mine = all.filter(function (e) { return e.urlStorageKey.indexOf(storagePrefix) === 0; });
          return Promise.all(mine.slice(0, 5).map(probe));
        })
        .then(function (hits) {
          hits = hits.filter(Boolean);
          if (!hits.length || running || upload || previous) return;
          unfinished.textContent = "";
          var head = document.createElement("p");
          head.textContent = hits.length === 1 ? "An upload from this browser is unfinished. Choose the same file " +
            "again to resume it:" : "Uploads from this browser are unfinished. Choose the same file again to resume one:";
          var list = document.createElement("ul");
          hits.forEach(function (hit) {
            var item = document.createElement("li");
            var name = document.createElement("strong");
            name.textContent = (hit.metadata && hit.metadata.filename) || "a file";
            item.appendChild(name);
            item.appendChild(document.createTextNode(": " + describe(hit) + "."));
            list.appendChild(item);
          });
          unfinished.appendChild(head);
          unfinished.appendChild(list);
          unfinished.hidden = false;
        });
    }

    // ------------------------------------------------------------ wiring

    form.addEventListener("submit", function (event) {
      var file = input.files && input.files[0];
      if (!file) return;  // let the server say what is missing
      event.preventDefault();
      if (running || upload) return;
      if (previous) resumePrevious(file);
      else startNew(file);
    });
    input.addEventListener("change", function () { lookForPrevious(input.files && input.files[0]); });
    // Choosing an exam chooses its template: the sheets are read with the
    // template its key is for (the server refuses any other).
    var examSelect = form.elements.exam;
    function followExam() {
      var chosen = examSelect.options[examSelect.selectedIndex];
      var template = chosen && chosen.dataset.template;
      if (template) form.elements.template.value = template;
    }
    if (examSelect) {
      examSelect.addEventListener("change", followExam);
      followExam();
    }
    pauseButton.addEventListener("click", pause);
    resumeButton.addEventListener("click", resume);
    byId("resume-previous").addEventListener("click", function () {
      if (previous && input.files[0]) resumePrevious(input.files[0]);
    });
    byId("start-over").addEventListener("click", function () {
      var entry = previous;
      var file = input.files[0];
      if (!entry || !file) return;
      previous = null;
      offer.hidden = true;
      submit.textContent = "Upload and read";
      // The old upload goes, with its batch (which has no file yet).
      tus.Upload.terminate(entry.uploadUrl, {headers: {"X-CSRFToken": csrf}, retryDelays: [0, 1000, 3000]})
        .catch(function () { /* expired or gone already */ })
        .then(function () { return storage.removeUpload(entry.urlStorageKey); })
        .then(function () { startNew(file); });
    });
    listUnfinished();
  }

  document.addEventListener("DOMContentLoaded", function () {
    bind(document.getElementById("upload-form"));
  });
})();
