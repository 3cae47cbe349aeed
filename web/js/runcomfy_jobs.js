// "RunComfy jobs" in ComfyUI's sidebar: what was spent today and this month, the balance, the limits in effect, and the
// jobs this pack sent to RunComfy, newest first, with their live state. The list comes from the pack's server
// route (kept in ComfyUI's user folder), so it is the same after a page reload or in another tab.
// Everything the server sends is shown with textContent, never as HTML.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { el } from "./runcomfy_dom.js";

const ROUTE = "/runcomfy/seedream/jobs";
const TAB_ID = "runcomfy-jobs";
const POLL_MS = 2000;
const PROMPT_WORDS = 8;
const REFRESH_EVENTS = ["executed", "execution_success", "execution_error", "execution_interrupted", "status"];
const STATES = {
  reserved: "reserved (about to be submitted)",
  queued: "queued",
  generating: "generating",
  done: "done",
  failed: "failed",
  cancelled: "cancelled",
  unknown: "outcome unknown",
  dropped: "not submitted",
};

// Bidirectional controls (U+202E and its kin) would let a hand-edited ledger or a shared workflow's prompt show a
// request id or text other than the one copied; they are left out of what is shown (Copy still copies the id).
const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

function plain(text) {
  return String(text ?? "").replace(BIDI_CONTROLS, "");
}

function setText(node, text) {
  text = plain(text);
  if (node.textContent !== text) node.textContent = text;
}

function usd(value) {
  if (!Number.isFinite(Number(value))) return "$?";
  const text = Number(value).toFixed(3);
  return "$" + (text.endsWith("0") ? text.slice(0, -1) : text); // $1.47, $8.10, $0.125
}

function ordinal(n) {
  const tens = n % 100, ones = n % 10;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ones === 1 ? "st" : ones === 2 ? "nd" : ones === 3 ? "rd" : "th";
  return `${n}${suffix}`;
}

function jobs(n) {
  return `${n} job${n === 1 ? "" : "s"}`;
}

function monthName(month) {
  const [year, number] = String(month ?? "").split("-").map(Number);
  if (!year || !number) return "This month";
  return new Date(Date.UTC(year, number - 1, 1)).toLocaleString("en", { month: "long", timeZone: "UTC" });
}

function totalsText(data) {
  const today = data.today ?? {}, month = data.month ?? {};
  return `Today: ${usd(today.usd ?? 0)} over ${jobs(today.jobs ?? 0)} · ` +
    `${monthName(month.month)}: ${usd(month.usd ?? 0)} over ${jobs(month.jobs ?? 0)}`;
}

// The account's balance as the server last read it (less what this ComfyUI submitted since), with when it was read.
function balanceText(balance) {
  const amount = Number(balance?.usd);
  if (balance?.usd == null || !Number.isFinite(amount)) return "Balance: unknown";
  const read = typeof balance.read_at === "number" ? ` (read ${new Date(balance.read_at * 1000).toLocaleTimeString()})` : "";
  return `Balance: ${amount < 0 ? "-" : ""}$${Math.abs(amount).toFixed(2)}${read}`;
}

function balanceTitle(balance) {
  if (balance?.problem) return `The RunComfy balance could not be read: ${balance.problem}. Runs are not held back by it.`;
  return "Your RunComfy balance, as last read (kept a short while), less what this ComfyUI submitted since.";
}

function limitsText(limits) {
  if (limits === null || typeof limits !== "object") return "The spending limits could not be read: see Settings → RunComfy → Spending limit.";
  const perRun = limits?.per_run_usd, perDay = limits?.per_day_usd;
  if (perRun == null && perDay == null) return "No spending limit (Settings → RunComfy → Spending limit).";
  const parts = [];
  if (perRun != null) parts.push(`at most ${usd(perRun)} per run`);
  if (perDay != null) parts.push(`at most ${usd(perDay)} per day`);
  return `Limits: ${parts.join(", ")}.`;
}

function stateText(job) {
  if (job.status === "queued" && Number.isInteger(job.queue_position) && job.queue_position > 0)
    return `queued (${ordinal(job.queue_position)} in line)`;
  return STATES[job.status] ?? String(job.status ?? "");
}

const NOT_CHARGED = new Set(["failed", "cancelled", "dropped"]); // counted $0 in the totals, as the server counts them

function costText(job) {
  if (NOT_CHARGED.has(job.status)) return job.cost_usd ? usd(job.cost_usd) : "not counted";
  if (job.cost_usd != null) return usd(job.cost_usd);
  if (job.estimate_usd != null) return `up to ${usd(job.estimate_usd)}`;
  return "";
}

function imagesText(job) {
  if (job.images != null) return `${job.images} image${job.images === 1 ? "" : "s"}`;
  if (job.max_images != null) return `up to ${job.max_images} image${job.max_images === 1 ? "" : "s"}`;
  return "";
}

function promptStart(prompt) {
  const words = String(prompt ?? "").trim().split(/\s+/).filter(Boolean);
  const start = words.slice(0, PROMPT_WORDS).join(" ");
  return words.length > PROMPT_WORDS || start.length > 80 ? start.slice(0, 80) + "…" : start;
}

function whenText(epochS) {
  if (typeof epochS !== "number") return "";
  const at = new Date(epochS * 1000);
  const sameDay = at.toDateString() === new Date().toDateString();
  return sameDay ? at.toLocaleTimeString() : at.toLocaleString();
}

// A thumbnail path from this server (it starts with one "/"); anything else is not shown.
function thumbnailURL(path) {
  return typeof path === "string" && path.startsWith("/") && !path.startsWith("//") ? api.apiURL(path) : null;
}

async function copyText(text) {
  try {
    if (navigator.clipboard?.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // not allowed here (a page opened by a LAN address is no secure context): fall back below
  }
  const area = el("textarea", { value: text, readOnly: true });
  Object.assign(area.style, { position: "fixed", top: "0", left: "0", opacity: "0" });
  document.body.append(area);
  area.select();
  try {
    return document.execCommand("copy");
  } catch {
    return false;
  } finally {
    area.remove();
  }
}

async function readJSON(response) {
  try {
    return await response.json();
  } catch {
    return { ok: false, error: `The ComfyUI server answered HTTP ${response.status} without the pack's reply; restart ComfyUI after updating the pack.` };
  }
}

const STYLE = `
.runcomfy-jobs { padding: 8px; font-size: 13px; display: flex; flex-direction: column; gap: 6px; }
.runcomfy-jobs-head { display: flex; flex-direction: column; gap: 2px; padding-bottom: 6px;
  border-bottom: 1px solid var(--border-color, #444); }
.runcomfy-jobs-totals, .runcomfy-jobs-balance { font-weight: 600; }
.runcomfy-jobs-money { display: flex; flex-wrap: wrap; column-gap: 12px; row-gap: 2px; }
.runcomfy-jobs-balance[data-known="false"] { opacity: 0.75; font-weight: normal; }
.runcomfy-jobs-limits, .runcomfy-job-meta, .runcomfy-jobs-empty { opacity: 0.75; }
.runcomfy-jobs-warning, .runcomfy-jobs-error { color: var(--error-text, #f5a623); }
.runcomfy-jobs-list { display: flex; flex-direction: column; gap: 6px; }
.runcomfy-job { display: flex; gap: 8px; padding: 6px 2px; border-bottom: 1px solid var(--border-color, #444); }
.runcomfy-job-thumb { width: 56px; height: 56px; flex: none; border-radius: 4px; object-fit: cover;
  background: var(--comfy-menu-bg, #1e1e1e); }
.runcomfy-job-body { display: flex; flex-direction: column; gap: 2px; min-width: 0; flex: 1; }
.runcomfy-job-top { display: flex; justify-content: space-between; gap: 6px; }
.runcomfy-job-state { font-weight: 600; }
.runcomfy-job[data-status="done"] .runcomfy-job-state { color: #6c6; }
.runcomfy-job[data-status="failed"] .runcomfy-job-state, .runcomfy-job[data-status="unknown"] .runcomfy-job-state { color: #e66; }
.runcomfy-job[data-status="cancelled"] .runcomfy-job-state { opacity: 0.7; }
.runcomfy-job-prompt { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.runcomfy-job-id { display: flex; align-items: center; gap: 4px; font-family: monospace; font-size: 11px; min-width: 0; }
.runcomfy-job-id > span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.runcomfy-job button { font-size: 11px; padding: 1px 6px; cursor: pointer; }
.runcomfy-job-message:empty, .runcomfy-job-detail:empty { display: none; }
.runcomfy-job-message { font-style: italic; }
.runcomfy-jobs-head > div, .runcomfy-job-meta, .runcomfy-job-detail, .runcomfy-job-message {
  overflow-wrap: anywhere; unicode-bidi: isolate; }
.runcomfy-job-prompt, .runcomfy-job-id > span { unicode-bidi: isolate; }
.runcomfy-job-detail { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 4; overflow: hidden; }
`;

function installStyle() {
  if (document.getElementById("runcomfy-jobs-style")) return;
  document.head.append(el("style", { id: "runcomfy-jobs-style", textContent: STYLE }));
}

// One row per ledger entry, kept while the entry is listed, so a thumbnail is loaded once and a Cancel
// message stays under its job while the list refreshes.
function createRow(refresh) {
  const thumb = el("img", { className: "runcomfy-job-thumb", loading: "lazy", alt: "", decoding: "async" });
  thumb.onerror = () => { thumb.style.visibility = "hidden"; };
  thumb.onload = () => { thumb.style.visibility = ""; };
  const state = el("span", { className: "runcomfy-job-state" });
  const cost = el("span", { className: "runcomfy-job-cost" });
  const prompt = el("div", { className: "runcomfy-job-prompt" });
  const meta = el("div", { className: "runcomfy-job-meta" });
  const idText = el("span");
  const copy = el("button", { className: "runcomfy-job-copy", textContent: "Copy", title: "Copy the request id" });
  const cancel = el("button", { className: "runcomfy-job-cancel", textContent: "Cancel", title: "Cancel this job at RunComfy" });
  const detail = el("div", { className: "runcomfy-job-detail" });
  const message = el("div", { className: "runcomfy-job-message" });
  const id = el("div", { className: "runcomfy-job-id" }, [idText, copy]);
  const root = el("div", { className: "runcomfy-job" }, [
    thumb,
    el("div", { className: "runcomfy-job-body" }, [
      el("div", { className: "runcomfy-job-top" }, [state, cost]),
      prompt, meta, id, detail, el("div", {}, [cancel]), message,
    ]),
  ]);
  let job = null;

  copy.onclick = async () => {
    if (!job?.request_id) return;
    const copied = await copyText(job.request_id);
    copy.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  };
  cancel.onclick = async () => {
    if (!job?.request_id || cancel.disabled) return;
    cancel.disabled = true;
    message.textContent = "Cancelling…";
    let done = false;
    try {
      const response = await api.fetchApi(`${ROUTE}/${encodeURIComponent(job.request_id)}/cancel`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: "{}",
      });
      const result = await readJSON(response);
      setText(message, (result.ok ? result.message : result.error) ?? (result.ok ? "Cancel sent." : "Cancel refused."));
      done = result.ok && result.cancelled === true;
    } catch {
      message.textContent = "Cancel failed: the ComfyUI server did not answer.";
    } finally {
      // once cancelled, a second press before the list refreshes would only replace this message with
      // "nothing to cancel": the button stays disabled (the row then shows the job cancelled, without it)
      cancel.disabled = done;
      refresh();
    }
  };

  function update(next) {
    job = next;
    root.dataset.entry = String(next.entry ?? "");
    root.dataset.requestId = next.request_id ?? "";
    root.dataset.status = String(next.status ?? "");
    setText(state, stateText(next));
    setText(cost, costText(next));
    const text = promptStart(next.prompt);
    setText(prompt, text);
    if (prompt.title !== plain(next.prompt)) prompt.title = plain(next.prompt);
    const metaParts = [whenText(next.time), imagesText(next), next.node_id != null ? `node #${next.node_id}` : ""];
    setText(meta, metaParts.filter(Boolean).join(" · "));
    setText(idText, next.request_id ? next.request_id : "no request id yet");
    idText.title = plain(next.request_id);
    copy.hidden = !next.request_id;
    cancel.hidden = !next.cancellable;
    setText(detail, next.detail ? String(next.detail) : "");
    detail.title = detail.textContent;
    const src = thumbnailURL(next.thumbnail);
    if (src && thumb.getAttribute("src") !== src) thumb.src = src;
    if (!src) { thumb.removeAttribute("src"); thumb.style.visibility = "hidden"; }
  }
  return { root, update };
}

function createPanel() {
  const totals = el("div", { className: "runcomfy-jobs-totals", textContent: "Loading…" });
  const balance = el("div", { className: "runcomfy-jobs-balance" });
  const limits = el("div", { className: "runcomfy-jobs-limits" });
  const warning = el("div", { className: "runcomfy-jobs-warning" });
  const error = el("div", { className: "runcomfy-jobs-error" });
  const empty = el("div", { className: "runcomfy-jobs-empty", textContent: "No RunComfy jobs yet." });
  const list = el("div", { className: "runcomfy-jobs-list" });
  const root = el("div", { className: "runcomfy-jobs" }, [
    el("div", { className: "runcomfy-jobs-head" }, [el("div", { className: "runcomfy-jobs-money" }, [totals, balance]), limits, warning, error]),
    empty, list,
  ]);
  empty.hidden = true;
  warning.hidden = error.hidden = true;
  const rows = new Map(); // entry id -> row
  let timer = null, soon = null, busy = false, again = false, stopped = false;

  function show(data) {
    error.hidden = true;
    setText(totals, totalsText(data));
    setText(balance, balanceText(data.balance));
    balance.title = balanceTitle(data.balance);
    balance.dataset.known = String(data.balance?.usd != null);
    setText(limits, limitsText(data.limits));
    warning.hidden = !data.warning;
    setText(warning, data.warning ? String(data.warning) : "");
    const listed = Array.isArray(data.jobs) ? data.jobs.filter((job) => job !== null && typeof job === "object") : [];
    const seen = new Set();
    listed.forEach((job, index) => {
      const key = String(job.entry ?? job.request_id ?? index);
      seen.add(key);
      let row = rows.get(key);
      if (!row) rows.set(key, (row = createRow(refreshSoon)));
      row.update(job);
      if (list.children[index] !== row.root) list.insertBefore(row.root, list.children[index] ?? null);
    });
    for (const [key, row] of rows) if (!seen.has(key)) { row.root.remove(); rows.delete(key); }
    empty.hidden = listed.length > 0;
  }

  function showError(text) {
    error.hidden = false;
    setText(error, text);
    if (totals.textContent === "Loading…") totals.textContent = "RunComfy jobs";
  }

  // Shown: (where the frontend says) still the active sidebar tab, and in the page. The sidebar hands over
  // its element before putting it in the page, so a panel not yet in the page gets a few seconds to arrive.
  const created = Date.now();
  let attached = false;
  function shown() {
    const active = app.extensionManager?.sidebarTab?.activeSidebarTabId;
    if (active !== undefined && active !== TAB_ID) return false;
    if (root.isConnected) attached = true;
    return root.isConnected || (!attached && Date.now() - created < 10000);
  }

  async function refresh() {
    if (stopped || busy) return;
    if (!shown()) { stop(); return; }
    busy = true;
    try {
      if (document.visibilityState !== "hidden") {
        let data;
        try {
          data = await readJSON(await api.fetchApi(ROUTE, { method: "GET", cache: "no-store" }));
        } catch {
          data = { ok: false, error: "Could not reach the ComfyUI server; retrying." };
        }
        if (data?.ok) show(data);
        else showError(String(data?.error ?? "The jobs list is unavailable."));
      }
    } catch (trouble) {
      console.error("RunComfy: the jobs list could not be shown", trouble);
      showError("The jobs list could not be shown (see the browser console); retrying.");
    } finally {
      busy = false;
      schedule(again ? 250 : POLL_MS); // an event during the request: ask again soon, the answer may predate it
      again = false;
    }
  }

  function schedule(ms) {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  function refreshSoon() {
    if (stopped) return;
    clearTimeout(soon);
    soon = setTimeout(() => { if (busy) again = true; else refresh(); }, 250);
  }

  function stop() {
    if (stopped) return;
    stopped = true;
    clearTimeout(timer);
    clearTimeout(soon);
    for (const name of REFRESH_EVENTS) api.removeEventListener(name, refreshSoon);
    // the sidebar may hand the same element to the next custom tab: leave it empty
    root.remove();
  }

  for (const name of REFRESH_EVENTS) api.addEventListener(name, refreshSoon);
  return { root, start: refresh, stop };
}

let current = null;
let warned = false;

app.registerExtension({
  name: "RunComfy.Seedream.JobsPanel",
  setup() {
    const manager = app.extensionManager;
    if (typeof manager?.registerSidebarTab !== "function") {
      if (!warned) console.warn("RunComfy: this ComfyUI frontend has no sidebar tabs for extensions; the jobs panel is not shown.");
      warned = true;
      return;
    }
    installStyle();
    manager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-wallet",
      title: "RunComfy jobs",
      tooltip: "RunComfy jobs: live state, cost and spending",
      type: "custom",
      render(element) {
        if (current?.root.parentNode === element) return; // drawn again into the same place: keep the rows
        current?.stop();
        current = createPanel();
        element.replaceChildren(current.root);
        current.start();
      },
      destroy() {
        current?.stop();
        current = null;
      },
    });
  },
});
