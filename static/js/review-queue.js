/* The review queue's keys. The page works without this file (links and
   forms); with it every action has a key, listed in the "Keys" dialog (?).
   Moving between sheets and accepting go through the page's own links and
   buttons, which htmx sends (hx-boost) and answers by swapping #queue. */
(function () {
  "use strict";

  const $ = (selector, root) => (root || document).querySelector(selector);
  const fields = () => Array.from(document.querySelectorAll("#queue .answer-input"));

  function focusField(input, keepScroll) {
    if (!input) return;
    input.focus({preventScroll: true});
    input.select();
    const item = input.closest(".doubt-field");
    if (item && !keepScroll) item.scrollIntoView({block: "nearest"});
  }

  // The first field in doubt has the focus on every sheet, so typing starts at once.
  function settle() {
    // Once per #queue: a field's own request also ends with a settle on #queue
    // (its inherited target), and must not take the focus back.
    const queue = $("#queue");
    if (!queue || queue.dataset.settled) return;
    queue.dataset.settled = "yes";
    // The next sheet's picture, fetched while this one is reviewed (the
    // server lets the browser keep it).
    if (queue.dataset.prefetch) new Image().src = queue.dataset.prefetch;
    const help = $("#shortcuts-button");
    if (help) help.hidden = false;
    for (const input of fields()) input.dataset.saved = input.value;
    // A new sheet starts at the top of the page, with the first field ready.
    window.scrollTo(0, 0);
    const first = fields()[0];
    if (first) focusField(first, true);
    else if ($("#accept-button")) $("#accept-button").focus({preventScroll: true});
  }

  function move(step) {
    const list = fields();
    const at = list.indexOf(document.activeElement);
    const next = at < 0 ? list[step > 0 ? 0 : list.length - 1] : list[at + step];
    if (next) focusField(next);
    else if (step > 0 && $("#accept-button")) $("#accept-button").focus();
  }

  function click(id) {
    const el = document.getElementById(id);
    if (el) el.click();
  }

  function toggleHelp() {
    const dialog = $("#shortcuts");
    if (!dialog) return;
    if (dialog.open) dialog.close();
    else dialog.showModal();
  }

  // A field whose answer changed is saved when it is left (its hx-post runs
  // on "change"; a value set by a key does not make the browser send one).
  function commit(input) {
    if (input.value === (input.dataset.saved || "")) return;
    input.dispatchEvent(new Event("change", {bubbles: true}));
  }

  // Whichever sent it (the browser or commit), a change is a save under way.
  document.addEventListener("change", (event) => {
    const input = event.target;
    if (input.classList && input.classList.contains("answer-input")) input.dataset.saved = input.value;
  }, true);

  function setValue(input, value) {
    input.value = value;
    commit(input);
  }

  // Letters typed in a field: upper case; only what the field takes.
  function typeInto(input, key, event) {
    const allowed = input.dataset.allowed || "";
    if (!allowed) return false; // free text: the browser types it
    const upper = key.toUpperCase();
    event.preventDefault();
    if (!allowed.includes(upper)) {
      input.classList.remove("refused");
      void input.offsetWidth; // restart the animation
      input.classList.add("refused");
      return true;
    }
    const start = input.selectionStart, end = input.selectionEnd;
    let text = input.value.slice(0, start) + upper + input.value.slice(end);
    if (input.dataset.kind === "question") {
      // Each option once, in printed order ("db" and "DB" are the same multiple mark).
      text = Array.from(allowed).filter((c) => text.includes(c)).join("");
    } else if (input.dataset.kind === "choice") {
      text = upper;
    }
    const max = Number(input.getAttribute("maxlength")) || 64;
    input.value = text.slice(0, max);
    const caret = Math.min(input.value.length, start + 1);
    input.setSelectionRange(caret, caret);
    return true;
  }

  document.addEventListener("keydown", (event) => {
    const queue = $("#queue");
    if (!queue) return;
    // Between the swap of the next sheet and its settle (20 ms, longer on a busy
    // machine) htmx has not wired its fields yet and has given the focus back to
    // the element of the old sheet's id (Accept): a key then would accept a sheet
    // nobody saw, or type into a field whose change is never saved. Such keys are dropped.
    if (!queue.dataset.settled) { event.preventDefault(); return; }
    const dialog = $("#shortcuts");
    if (dialog && dialog.open) {
      if (event.key === "?") { event.preventDefault(); dialog.close(); }
      return; // Esc closes it by itself
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    const inField = target.classList && target.classList.contains("answer-input");
    const inOther = !inField && target.matches && target.matches("input, select, textarea, summary");
    if (inOther) return; // the "another field" form behaves as forms do
    const key = event.key;

    if (key === "?") { event.preventDefault(); toggleHelp(); return; }
    if (key === "Enter") {
      if (target.tagName === "BUTTON" || target.tagName === "A") return; // its own action
      event.preventDefault();
      click("accept-button");
      return;
    }
    if (key === "ArrowDown") { event.preventDefault(); move(1); return; }
    if (key === "ArrowUp") { event.preventDefault(); move(-1); return; }
    if (key === "PageDown") { event.preventDefault(); click("next-sheet"); return; }
    if (key === "PageUp") { event.preventDefault(); click("previous-sheet"); return; }

    if (inField) {
      if (key === "Escape") { event.preventDefault(); target.value = target.dataset.saved || ""; target.select(); return; }
      if (key === " " || key === "-") { event.preventDefault(); setValue(target, ""); move(1); return; }
      if (key.length === 1) {
        const upper = key.toUpperCase();
        const isCommand = "JKU".includes(upper) && !(target.dataset.allowed || "").includes(upper);
        if (!isCommand || !target.dataset.allowed) {
          typeInto(target, key, event);
          return;
        }
      } else {
        return; // Backspace, arrows, Tab: the browser's own
      }
    }
    const lower = key.toLowerCase();
    if (lower === "j" || (!inField && key === "ArrowRight")) { event.preventDefault(); click("next-sheet"); }
    else if (lower === "k" || (!inField && key === "ArrowLeft")) { event.preventDefault(); click("previous-sheet"); }
    else if (lower === "u") { event.preventDefault(); click("undo-button"); }
  });

  document.addEventListener("focusout", (event) => {
    const input = event.target;
    if (input.classList && input.classList.contains("answer-input") && input.isConnected) commit(input);
  });

  // Leaving the page gives the sheet back at once, for the next reviewer.
  window.addEventListener("pagehide", () => {
    const queue = $("#queue");
    const url = queue && queue.dataset.release;
    const token = $("#sheet-form input[name=csrfmiddlewaretoken]");
    if (!url || !token || !navigator.sendBeacon) return;
    const body = new FormData();
    body.append("csrfmiddlewaretoken", token.value);
    navigator.sendBeacon(url, body);
  });

  document.addEventListener("DOMContentLoaded", settle);
  document.addEventListener("htmx:afterSettle", settle);
})();
