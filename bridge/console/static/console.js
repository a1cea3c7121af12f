// The overview refreshes its live part without a reload: every few seconds the element marked
// data-refresh is replaced by the fragment its URL answers (HTML rendered and escaped by the
// server). Stops when the session ends (the answer is not the fragment any more).
"use strict";
(function () {
  const live = document.querySelector("[data-refresh]");
  if (!live) return;
  const every = Math.max(1, Number(live.dataset.every || 5)) * 1000;
  async function refresh() {
    try {
      const answer = await fetch(live.dataset.refresh, { credentials: "same-origin", redirect: "manual" });
      if (answer.status !== 200) return false;
      const fresh = await answer.text();
      // Never pull a focused link from under the keyboard: wait until focus leaves.
      if (!live.contains(document.activeElement)) live.innerHTML = fresh;
    } catch (error) {
      // A restart or a network blip: try again at the next tick.
    }
    return true;
  }
  async function loop() {
    if (await refresh()) setTimeout(loop, every);
  }
  setTimeout(loop, every);
})();
