// The labeling loop in the browser: show a pair, keep the next one loaded, send answers through
// an outbox that retries until the server has them (an idempotency key makes a retry harmless),
// and undo the last answer. Keys: J same, K different, S unsure, U or Backspace undo, I opens or
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
    pendingNote.textContent = `${outbox.length} answer(s) waiting to be sent; retrying…`;
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
      let response = null;
      try {
        response = await request(answerUrl(item.pair_id), {
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
  async function fetchNext() {
    const exclude = [current && current.pair_id, ...outbox.map((item) => item.pair_id)]
      .filter(Boolean)
      .join(",");
    for (let delay = 500; ; delay = Math.min(delay * 2, 10000)) {
      try {
        const response = await request(`${nextUrl}?exclude=${exclude}`);
        showSignedOut(authLost(response));
        if (response.status === 204) return null;
        if (response.ok) {
          const pair = await response.json();
          await Promise.all([pair.a.url, pair.b.url].map(preload));
          return pair;
        }
      } catch (error) {
        // Offline: try again below.
      }
      if (signedOut.hidden) status.textContent = "Cannot reach the server; retrying…";
      await sleep(delay);
    }
  }

  function preload(url) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = image.onerror = resolve;
      image.src = url;
    });
  }

  function show(pair) {
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
    upcoming = fetchNext();
  }

  async function answer(value) {
    if (!current) return;
    outbox.push({ pair_id: current.pair_id, answer: value, key: newKey() });
    saveOutbox();
    answered.push(current);
    const waiting = upcoming;
    current = null;
    flush();
    show(await waiting);
  }

  async function undo() {
    const last = answered.pop();
    if (!last) return;
    const queued = outbox.findIndex((item) => item.pair_id === last.pair_id);
    if (queued > 0 || (queued === 0 && !sending)) {
      // Never sent: taking it out of the outbox is the whole undo.
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
    else answer(button.dataset.answer);
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest && event.target.closest("input, textarea, select")) return;
    const key = event.key.toLowerCase();
    const actions = { j: "same", k: "different", s: "unsure" };
    if (actions[key]) {
      event.preventDefault();
      answer(actions[key]);
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
