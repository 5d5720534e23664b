// Palisade console, Bundles page: upload a bundle (or all parts of a split bundle) through the
// resumable upload API, then import it. Loaded as a static file from the appliance, so the
// page's Content-Security-Policy ('self', no inline script) allows it.
//
// Protocol (see src/api/bundles.rs): POST /v1/bundle-uploads opens a session; PATCH
// /v1/bundle-uploads/{id} with Upload-Offset appends one chunk; GET tells the offset the server
// holds; POST /v1/bundle-uploads/{id}/import with {"parts": [...]} imports. Changes made with the
// session cookie carry the session's CSRF token in X-CSRF-Token.
//
// Resuming: the session id of each file is kept in localStorage under its name, size and
// modification time, so choosing the same file again after a reload (or a failed attempt)
// continues from the offset the server reports instead of sending everything again.
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  if (!form) return; // not a system admin: the page has no upload form
  const input = document.getElementById("bundle-file");
  const button = document.getElementById("upload-submit");
  const box = document.getElementById("upload-progress");
  const bar = document.getElementById("upload-bar");
  const status = document.getElementById("upload-status");
  const result = document.getElementById("upload-result");
  const csrf = form.dataset.csrf;

  const KEY_PREFIX = "palisade.bundle-upload:";
  const MAX_ATTEMPTS = 10; // consecutive failures without progress before giving up
  const MB = 1e6;

  class Stop extends Error {} // a failure retrying cannot fix: shown as is

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const mb = (n) => (n / MB).toFixed(n < 10 * MB ? 2 : 1) + " MB";
  const keyOf = (f) => KEY_PREFIX + f.name + ":" + f.size + ":" + f.lastModified;

  function remembered(f) {
    try { return localStorage.getItem(keyOf(f)); } catch (_) { return null; }
  }
  function remember(f, id) {
    try { localStorage.setItem(keyOf(f), id); } catch (_) { /* private mode: no resume */ }
  }
  function forget(f) {
    try { localStorage.removeItem(keyOf(f)); } catch (_) { /* nothing kept */ }
  }

  // The problem+json detail of a refused request (with the request id of a 5xx).
  async function problem(res, what) {
    let detail = "";
    let id = "";
    try {
      const body = await res.json();
      detail = body.detail || body.title || "";
      id = body.request_id || "";
    } catch (_) { /* not JSON */ }
    let msg = what + " failed (HTTP " + res.status + ")" + (detail ? ": " + detail : "");
    if (id) msg += " [request id " + id + "]";
    return msg;
  }

  function api(method, path, headers, body) {
    const h = Object.assign({}, headers || {});
    if (method !== "GET") h["X-CSRF-Token"] = csrf;
    return fetch(path, { method, headers: h, body, credentials: "same-origin", cache: "no-store" });
  }

  function show(kind, text) {
    result.hidden = false;
    result.className = "flash " + kind;
    result.textContent = text;
  }

  // Run `step` (which returns a Response) until it does not fail with a network error or a
  // 5xx, waiting longer each time (1 s, 2 s, 4 s... at most 15 s).
  async function withRetry(label, step) {
    for (let attempt = 1; ; attempt++) {
      let why;
      try {
        const res = await step();
        if (res.status < 500) return res;
        why = await problem(res, label);
      } catch (e) {
        if (e instanceof Stop) throw e;
        why = label + ": connection lost (" + e.message + ")";
      }
      if (attempt >= MAX_ATTEMPTS) {
        throw new Stop(why + ". Gave up after " + attempt + " attempts: choose the same file again to resume.");
      }
      const wait = Math.min(1000 * 2 ** (attempt - 1), 15000);
      status.textContent = why + ". Retrying in " + wait / 1000 + " s (attempt " + (attempt + 1) + " of " + MAX_ATTEMPTS + ").";
      await sleep(wait);
    }
  }

  // The server's offset of session `id`, or null if the session is gone.
  async function serverOffset(id) {
    const res = await withRetry("Asking for the upload's offset", () =>
      api("GET", "/v1/bundle-uploads/" + encodeURIComponent(id)));
    // 404: removed; 410: expired after a day without a chunk. Either way, start again.
    if (res.status === 404 || res.status === 410) return null;
    if (!res.ok) throw new Stop(await problem(res, "Asking for the upload's offset"));
    return (await res.json()).offset;
  }

  async function openSession() {
    const res = await withRetry("Starting the upload", () => api("POST", "/v1/bundle-uploads"));
    if (res.status !== 201) throw new Stop(await problem(res, "Starting the upload"));
    return (await res.json()).id;
  }

  // A session for `f` and where to continue: the remembered one if the server still holds a
  // prefix of a plausible length, else a new one.
  async function sessionFor(f) {
    const id = remembered(f);
    if (id) {
      const offset = await serverOffset(id);
      if (offset !== null && offset <= f.size) return { id, offset };
      if (offset !== null) await api("DELETE", "/v1/bundle-uploads/" + encodeURIComponent(id)).catch(() => {});
      forget(f);
    }
    const fresh = await openSession();
    remember(f, fresh);
    return { id: fresh, offset: 0 };
  }

  async function upload(files) {
    const chunk = Math.max(1, parseInt(form.dataset.chunkBytes, 10) || 8 * 1024 * 1024);
    const total = files.reduce((n, f) => n + f.size, 0);
    let done = 0; // bytes of earlier files, all held by the server
    let resumed = 0; // bytes found on the server already
    let sent = 0; // bytes sent in this run (for the rate)
    const started = performance.now();
    bar.max = Math.max(total, 1);
    const ids = [];
    for (const f of files) {
      let { id, offset } = await sessionFor(f);
      ids.push(id);
      resumed += offset;
      let misses = 0;
      while (offset < f.size) {
        bar.value = done + offset;
        const secs = (performance.now() - started) / 1000;
        const rate = secs > 0 ? (sent / MB / secs).toFixed(1) + " MB/s" : "";
        status.textContent = f.name + ": " + mb(done + offset) + " of " + mb(total) +
          (rate ? " at " + rate : "") + (resumed ? " (resumed at " + mb(resumed) + ")" : "");
        const end = Math.min(offset + chunk, f.size);
        let res;
        try {
          res = await api("PATCH", "/v1/bundle-uploads/" + encodeURIComponent(id),
            { "Content-Type": "application/octet-stream", "Upload-Offset": String(offset) },
            f.slice(offset, end));
        } catch (e) {
          res = null;
        }
        if (res && res.status === 204) {
          const reached = parseInt(res.headers.get("Upload-Offset"), 10);
          sent += (Number.isFinite(reached) ? reached : end) - offset;
          offset = Number.isFinite(reached) ? reached : end;
          misses = 0;
          continue;
        }
        if (res && res.status === 404) {
          forget(f);
          throw new Stop("The server no longer holds this upload (it was removed): choose the file again to start over.");
        }
        if (res && res.status === 410) {
          forget(f);
          throw new Stop(await problem(res, "Sending " + f.name));
        }
        if (res && res.status !== 409 && res.status < 500) {
          throw new Stop(await problem(res, "Sending " + f.name));
        }
        // Dropped connection, 5xx, or the server holds a different length (409): wait unless
        // it was a plain mismatch, then continue from what the server reports.
        misses++;
        if (misses >= MAX_ATTEMPTS) {
          throw new Stop("Sending " + f.name + " failed " + misses + " times in a row: choose the same file again to resume.");
        }
        if (!res || res.status >= 500) {
          const wait = Math.min(1000 * 2 ** (misses - 1), 15000);
          const why = res ? await problem(res, "Sending " + f.name) : "Connection lost";
          status.textContent = why + ". Retrying in " + wait / 1000 + " s from the offset the server holds.";
          await sleep(wait);
        }
        const now = await serverOffset(id);
        if (now === null) {
          forget(f);
          throw new Stop("The server no longer holds this upload: choose the file again to start over.");
        }
        offset = now;
      }
      done += f.size;
    }
    bar.value = total;
    status.textContent = "Uploaded " + mb(total) + ". Verifying and importing…";
    return { ids, resumed };
  }

  async function importUploaded(files, ids) {
    const path = "/v1/bundle-uploads/" + encodeURIComponent(ids[0]) + "/import";
    const body = JSON.stringify({ parts: ids.slice(1) });
    let res;
    for (let attempt = 1; ; attempt++) {
      try {
        res = await api("POST", path, { "Content-Type": "application/json" }, body);
        break;
      } catch (e) {
        // The import may have finished before the answer was lost: it removes the sessions.
        if (attempt >= 3) throw new Stop("The connection dropped during the import: reload the page to see whether the bundle is listed.");
        await sleep(2000 * attempt);
        if ((await serverOffset(ids[0])) === null) {
          files.forEach(forget);
          throw new Stop("The connection dropped during the import and the upload is gone, so the import most likely finished: reload the page to see the list.");
        }
      }
    }
    if (res.ok) {
      files.forEach(forget);
      return res.json();
    }
    const msg = await problem(res, "Import");
    if (res.status < 500) {
      // Refused (bad signature, untrusted signer, older version...): the upload is of no
      // further use, and a fresh attempt should send the file again.
      for (const id of ids) await api("DELETE", "/v1/bundle-uploads/" + encodeURIComponent(id)).catch(() => {});
      files.forEach(forget);
    }
    throw new Stop(msg);
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const files = Array.from(input.files || []);
    if (files.length === 0) {
      show("error", "Choose the bundle file first (every part, for a split bundle).");
      return;
    }
    // Parts of a split bundle go in name order (.part001, .part002, ...).
    files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    button.disabled = true;
    input.disabled = true;
    result.hidden = true;
    box.hidden = false;
    bar.value = 0;
    try {
      const { ids, resumed } = await upload(files);
      const r = await importUploaded(files, ids);
      let notice = (r.already_imported ? "Already imported: " : "Imported ") + r.name + " " + r.version +
        " (" + r.artifacts + " artifact(s), " + (r.trusted ? "signed by a trusted key" : "NOT signed by a trusted key") + ")";
      if (resumed) notice += "; resumed an earlier upload at " + mb(resumed);
      // Show the refreshed list with the outcome.
      location.assign("/bundles?" + new URLSearchParams({ notice }).toString());
    } catch (e) {
      show("error", e instanceof Stop ? e.message : "Upload failed: " + e);
      status.textContent = "";
      button.disabled = false;
      input.disabled = false;
    }
  });

  form.hidden = false;
  const fallback = document.getElementById("upload-needs-script");
  if (fallback) fallback.hidden = true;
})();
