// "RunComfy > Spending limit" in ComfyUI's settings: the most one run and one day may cost, kept by the
// pack's server route (which also enforces them). An environment variable set for a limit wins over the
// setting: its value is shown and that input is disabled.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { el } from "./runcomfy_dom.js";

const ROUTE = "/runcomfy/seedream/spending";
const FIELDS = [
  { key: "per_run_usd", label: "Most per run (USD)", what: "per run", className: "runcomfy-spending-per-run" },
  { key: "per_day_usd", label: "Most per day (USD)", what: "per day", className: "runcomfy-spending-per-day" },
];

function usd(value) {
  const text = Number(value).toFixed(3);
  return "$" + (text.endsWith("0") ? text.slice(0, -1) : text);
}

function describe(state) {
  const parts = FIELDS.map(({ key, what }) =>
    state[key] == null ? `no limit ${what}` : `at most ${usd(state[key])} ${what}`);
  return `In effect: ${parts.join(", ")}.`;
}

async function call(options) {
  const response = await api.fetchApi(ROUTE, options);
  try {
    return await response.json();
  } catch {
    return { ok: false, error: `The ComfyUI server answered HTTP ${response.status}; restart ComfyUI after updating the pack.` };
  }
}

// The value typed in one input: null for empty (no limit), a number, or an error text.
function parse(input, label) {
  const text = input.value.trim();
  const problem = `${label}: enter an amount in US dollars, such as 2.50, or leave it empty for no limit.`;
  if (input.validity?.badInput) return { error: problem }; // typed, but not a number: never "no limit"
  if (text === "") return { value: null };
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0)
    return { error: problem };
  return { value };
}

function renderSetting() {
  const status = el("div", { className: "runcomfy-spending-status", textContent: "Loading…" });
  const save = el("button", { className: "runcomfy-spending-save", textContent: "Save", disabled: true });
  const inputs = {};
  const notes = {};
  const rows = FIELDS.map(({ key, label, className }) => {
    const input = el("input", {
      type: "number", min: "0", step: "0.01", placeholder: "no limit", className, disabled: true,
    });
    input.setAttribute("aria-label", label);
    Object.assign(input.style, { width: "7em", padding: "2px 4px" });
    input.onkeydown = (event) => { if (event.key === "Enter") save.click(); };
    const note = el("span", { className: "runcomfy-spending-env" });
    note.style.opacity = "0.75";
    inputs[key] = input;
    notes[key] = note;
    const row = el("label", {}, [el("span", { textContent: label }), input, note]);
    Object.assign(row.style, { display: "flex", alignItems: "center", gap: "8px" });
    row.firstChild.style.minWidth = "11em";
    return row;
  });
  let saved = {}; // what the setting holds, sent back unchanged for a limit set by an environment variable
  let env = {};

  function show(state) {
    saved = state.saved ?? {};
    env = state.env ?? {};
    for (const { key } of FIELDS) {
      const fromEnv = env[key];
      const value = fromEnv ? state[key] : saved[key];
      inputs[key].value = value == null ? "" : String(value);
      inputs[key].disabled = !!fromEnv;
      notes[key].textContent = fromEnv ? `set by ${fromEnv} (wins over this setting)` : "";
    }
    save.disabled = FIELDS.every(({ key }) => env[key]);
  }

  async function load() {
    try {
      const state = await call({ method: "GET" });
      if (state.ok) { show(state); status.textContent = state.error ? String(state.error) : describe(state); }
      else status.textContent = String(state.error ?? "The spending limit is unavailable.");
    } catch {
      status.textContent = "Could not reach the pack's server route.";
    }
  }

  save.onclick = async () => {
    const body = {};
    for (const { key, label } of FIELDS) {
      if (env[key]) { body[key] = saved[key] ?? null; continue; }
      const parsed = parse(inputs[key], label);
      if (parsed.error) { status.textContent = parsed.error; inputs[key].focus(); return; }
      body[key] = parsed.value;
    }
    save.disabled = true;
    status.textContent = "Saving…";
    try {
      const state = await call({
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (state.ok) { show(state); status.textContent = `Saved. ${state.error ? String(state.error) : describe(state)}`; }
      else status.textContent = String(state.error ?? "Not saved.");
    } catch {
      status.textContent = "Saving failed: the ComfyUI server did not answer.";
    } finally {
      save.disabled = FIELDS.every(({ key }) => env[key]);
    }
  };

  load();
  const box = el("div", { className: "runcomfy-spending" }, [...rows, el("div", {}, [save]), status]);
  Object.assign(box.style, { display: "flex", flexDirection: "column", gap: "6px" });
  return box;
}

app.registerExtension({
  name: "RunComfy.Seedream.SpendingSettings",
  settings: [
    {
      id: "RunComfy.SpendingLimit",
      category: ["RunComfy", "Spending limit"],
      name: "RunComfy spending limit",
      tooltip: "Runs that could cost more are refused before anything is sent. Empty = no limit.",
      type: () => renderSetting(),
      defaultValue: "",
    },
  ],
});
