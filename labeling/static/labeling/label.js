// The labeling loop in the browser: show a pair, keep the next one loaded, send answers through
// an outbox that retries until the server has them (an idempotency key makes a retry harmless),
// and undo the last answer. An answer's request also asks for the pair after the preloaded one
// (?next=1), so each answer is one round trip. Keys: J same, K different, S unsure, U or Backspace undo, I opens or
// closes the collection's instructions.
// The outbox belongs to the signed-in user: it is kept per user, every answer says whose it is,
// and when the session ends (401/403) it waits for that user to log in again, then sends.
"use strict";
(() => {
  const root = document.getElementById("labeler");
  if (!root) return;
  const nextUrl = root.dataset.nextUrl;
  const answerUrl = (id) => root.dataset.answerUrl.replace("/0/", `/${id}/`);
  const undoUrl = (id) => root.dataset.undoUrl.replace("/0/", `/${id}/`);
  const pageCsrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];
  const user = root.dataset.user;
  const imageA = document.getElementById("image-a");
  const imageB = document.getElementById("image-b");
  const status = document.getElementById("label-status");
  const pendingNote = document.getElementById("pending");
  const signedOut = document.getElementById("signed-out");
  const buttons = root.querySelectorAll("button");
  const instructions = document.getElementById("instructions");
  const pinForm = document.getElementById("pin-example");
  // Per user: another user signing in on this browser never sends these answers as theirs.
  const OUTBOX = `autoret-outbox-${user}-${nextUrl}`;

  let current = null; // the pair on screen
  let upcoming = null; // a promise of the next pair (or null when none is left)
  let upcomingId; // that pair's id once it has arrived (null: none left), undefined before
  // Outbox key -> the page waiting for the pair its answer's response brings: { exclude, resolve }.
  const following = new Map();
  // Key press (or click) to next pair on screen, for bench/label_page.py: the last 200 answers.
  const timings = (window.__labelTimings = []);
  const answered = []; // pairs answered on this page, most recent last, for undo
  let outbox = JSON.parse(localStorage.getItem(OUTBOX) || "[]");
  let sending = false;

  // Open on the first visit and whenever an admin changed them since this user last saw them;
  // afterwards they stay out of the way until asked for.
  if (instructions) {
    const seen = localStorage.getItem(instructions.dataset.remember);
    instructions.open = seen !== instructions.dataset.version;
    localStorage.setItem(instructions.dataset.remember, instructions.dataset.version);
  }

  const saveOutbox = () => localStorage.setItem(OUTBOX, JSON.stringify(outbox));
  const newKey = () =>
    crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const IDLE_CHECK_MS = 5000;
  // An answer the server has not confirmed after this long is shown as waiting (a slow server);
  // sooner, every answer would flash the note.
  const SLOW_ANSWER_MS = 1000;
  let idleCheck = null;

  // Logging in (again, perhaps in another tab) rotates the CSRF token: the cookie has the new one.
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : pageCsrf;
  }

  async function request(url, options = {}) {
    const headers = {
      "X-CSRFToken": csrfToken(),
      "X-Autoret-User": user,
      Accept: "application/json",
      ...(options.headers || {}),
    };
    return fetch(url, { credentials: "same-origin", ...options, headers });
  }

  // 401/403: the session ended, or its CSRF token changed, or another user is signed in now.
  const authLost = (response) => Boolean(response) && (response.status === 401 || response.status === 403);

  function showSignedOut(lost) {
    signedOut.hidden = !lost;
  }

  function showPending() {
    pendingNote.hidden = outbox.length === 0;
    pendingNote.textContent = `${outbox.length} answer(s) waiting for the server; kept in this browser until it has them.`;
  }

  // Sends the outbox in order. Network errors, 5xx and 429 (too many answers a minute) are
  // retried with back-off forever (the answer stays in localStorage meanwhile), and so are 401
  // and 403, while the page asks the user to log in again; any other 4xx is the server refusing
  // it for good.
  async function flush() {
    if (sending) return;
    sending = true;
    let delay = 500;
    while (outbox.length) {
      const item = outbox[0];
      const waiter = following.get(item.key);
      following.delete(item.key);
      let url = answerUrl(item.pair_id);
      if (waiter) {
        const exclude = [waiter.exclude, ...outbox.slice(1).map((other) => other.pair_id)];
        url += `?next=1&exclude=${exclude.join(",")}`;
      }
      let response = null;
      try {
        response = await request(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ answer: item.answer, idempotency_key: item.key }),
        });
      } catch (error) {
        response = null;
      }
      const refused =
        response && response.status >= 400 && response.status < 500 && response.status !== 429 && !authLost(response);
      showSignedOut(authLost(response));
      if (waiter) {
        // The pair after the one on screen came with the answer; without it (a failed or refused
        // request) it is asked for on its own at once, never after the outbox's retries.
        const body = response && response.ok ? await response.json().catch(() => ({})) : {};
        waiter.resolve("next" in body ? loaded(body.next) : fetchNext([waiter.exclude]));
      }
      if (response && (response.ok || refused)) {
        if (!response.ok) status.textContent = `An answer was refused (${response.status}).`;
        outbox.shift();
        saveOutbox();
        delay = 500;
        document.body.dispatchEvent(new Event("answered"));
      } else {
        showPending();
        // A 429 says how long to wait; otherwise back off exponentially.
        const retryAfter = response && response.status === 429 ? Number(response.headers.get("Retry-After")) : 0;
        await sleep(retryAfter > 0 ? retryAfter * 1000 : delay);
        delay = Math.min(delay * 2, 10000);
      }
      showPending();
    }
    sending = false;
  }

  // The next pair, leased to this annotator, its images fetched before they are shown.
  async function fetchNext(also = []) {
    const exclude = [current && current.pair_id, ...also, ...outbox.map((item) => item.pair_id)]
      .filter(Boolean)
      .join(",");
    for (let delay = 500; ; delay = Math.min(delay * 2, 10000)) {
      try {
        const response = await request(`${nextUrl}?exclude=${exclude}`);
        showSignedOut(authLost(response));
        if (response.status === 204) return null;
        if (response.ok) return loaded(await response.json());
      } catch (error) {
        // Offline: try again below.
      }
      if (signedOut.hidden) status.textContent = "Cannot reach the server; retrying…";
      await sleep(delay);
    }
  }

  // The pair (or null) once both its images are in the browser's cache.
  async function loaded(pair) {
    if (pair) await Promise.all([pair.a.url, pair.b.url].map(preload));
    return pair;
  }

  function preload(url) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = image.onerror = resolve;
      image.src = url;
    });
  }

  // `next`: a promise of the pair after this one, when an answer's response brings it.
  function show(pair, next = null) {
    current = pair;
    const enabled = Boolean(pair);
    buttons.forEach((button) => {
      button.disabled = button.hasAttribute("data-undo") ? answered.length === 0 : !enabled;
    });
    if (pinForm) {
      pinForm.elements.a.value = pair ? pair.a.id : "";
      pinForm.elements.b.value = pair ? pair.b.id : "";
      pinForm.querySelectorAll("button").forEach((button) => (button.disabled = !enabled));
    }
    clearTimeout(idleCheck);
    if (!pair) {
      imageA.removeAttribute("src");
      imageB.removeAttribute("src");
      status.textContent =
        "Nothing left to label right now. New pairs come with the next model; checking every few seconds.";
      // Retraining runs by itself after enough answers and mines new pairs: look again.
      idleCheck = setTimeout(async () => {
        if (current) return;
        const next = await fetchNext();
        if (!current) show(next);
      }, IDLE_CHECK_MS);
      return;
    }
    imageA.src = pair.a.url;
    imageB.src = pair.b.url;
    root.dataset.pairId = pair.pair_id;
    const why = [pair.strategy, pair.version ? `model v${pair.version}` : ""].filter(Boolean);
    status.textContent = `Pair ${pair.pair_id}${why.length ? ` (${why.join(", ")})` : ""}`;
    upcomingId = undefined;
    const pending = (next || fetchNext()).then((nextPair) => {
      if (upcoming === pending) upcomingId = nextPair ? nextPair.pair_id : null;
      return nextPair;
    });
    upcoming = pending;
  }

  // `pressedAt`: the key press's (or click's) event time, for window.__labelTimings.
  async function answer(value, pressedAt = performance.now()) {
    if (!current) return;
    const item = { pair_id: current.pair_id, answer: value, key: newKey() };
    outbox.push(item);
    saveOutbox();
    answered.push(current);
    const waiting = upcoming;
    // The pair to show next is here already and nothing else waits in the outbox: this answer's
    // response brings the pair after it (an answer queued behind retries would hold it back).
    const next =
      upcomingId && outbox.length === 1
        ? new Promise((resolve) => following.set(item.key, { exclude: upcomingId, resolve }))
        : null;
    current = null;
    flush();
    setTimeout(showPending, SLOW_ANSWER_MS);
    show(await waiting, next);
    const shown = performance.now();
    requestAnimationFrame(() => {
      timings.push({ pair_id: item.pair_id, shown: shown - pressedAt, frame: performance.now() - pressedAt });
      if (timings.length > 200) timings.shift();
    });
  }

  async function undo() {
    const last = answered.pop();
    if (!last) return;
    const queued = outbox.findIndex((item) => item.pair_id === last.pair_id);
    if (queued > 0 || (queued === 0 && !sending)) {
      // Never sent: taking it out of the outbox is the whole undo.
      following.delete(outbox[queued].key);
      outbox.splice(queued, 1);
      saveOutbox();
    } else {
      while (outbox.some((item) => item.pair_id === last.pair_id)) await sleep(100);
      const response = await request(undoUrl(last.pair_id), { method: "POST" });
      if (!response.ok && response.status !== 409) {
        answered.push(last);
        status.textContent = "Undo failed; try again.";
        return;
      }
      document.body.dispatchEvent(new Event("answered"));
    }
    // The shown pair stays leased to this annotator and comes back from /next/ later.
    show(last);
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button || button.disabled) return;
    if (button.hasAttribute("data-undo")) undo();
    else answer(button.dataset.answer, event.timeStamp);
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest && event.target.closest("input, textarea, select")) return;
    const key = event.key.toLowerCase();
    const actions = { j: "same", k: "different", s: "unsure" };
    if (actions[key]) {
      event.preventDefault();
      answer(actions[key], event.timeStamp);
    } else if (key === "u" || key === "backspace") {
      event.preventDefault();
      undo();
    } else if (key === "i" && instructions) {
      event.preventDefault();
      instructions.open = !instructions.open;
    }
  });

  window.addEventListener("online", flush);
  showPending();
  flush();
  fetchNext().then(show);
})();
