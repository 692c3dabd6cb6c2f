/**
 * What the page shows: the device's state as a table a person can read at a glance (and a test
 * can screenshot), a red box for the error that stopped it, and the form that takes this device's
 * data. DOM only; the state comes from page.js.
 */

const ROWS = [
  ["phase", "Status", (s) => s.phase + (s.progress ? ` (${s.progress})` : "")],
  ["job", "Job", (s) => s.job ?? "-"],
  ["round", "Round", (s) => (s.round === null ? "-" : `${s.round}${s.rounds ? ` of ${s.rounds}` : ""}`)],
  ["loss", "Loss", (s) => (s.loss === null ? "-" : s.loss.toFixed(4))],
  ["probe", "Time per probe", (s) => (s.probeSeconds === null ? "-" : `${s.probeSeconds.toFixed(2)} s`)],
  ["sent", "Sent", (s) => (s.sent ? `${s.sent.scalars} scalar${s.sent.scalars === 1 ? "" : "s"} for round ${s.sent.round} (${s.bytesSent.toLocaleString()} bytes in all)` : "nothing yet")],
  ["backend", "Runtime", (s) => s.backend ?? "-"],
  ["connection", "Broker", (s) => s.connection ?? "-"],
  ["battery", "Battery", (s) => s.battery ?? "not exposed by this browser"],
  ["network", "Network", (s) => s.network ?? "-"],
];

const $ = (id) => document.getElementById(id);

/** Draw the state (cheap: a few text nodes). */
export function render(state) {
  const table = $("state");
  if (!table) return;
  if (!table.rows.length) {
    for (const [key, label] of ROWS) {
      const row = table.insertRow();
      row.insertCell().textContent = label;
      row.insertCell().id = key;
    }
  }
  for (const [key, , show] of ROWS) $(key).textContent = show(state);
  $("error").textContent = state.error ?? "";
  $("error").hidden = !state.error;
  $("warning").textContent = state.warning ?? "";
  $("message").textContent = state.message ?? "";
}

/** Show the data form; resolves with `{text, name}` once the person picked a file or pasted text. */
export function showDataForm(task) {
  const form = $("data-form");
  form.hidden = false;
  if (task) $("data-task").textContent = `The job's task: ${String(task).slice(0, 200)}.`;
  return new Promise((resolve) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = $("data-file").files[0];
      const text = file ? await file.text() : $("data-text").value;
      if (!text.trim()) {
        $("data-task").textContent = "Give a file or paste some examples first.";
        return;
      }
      form.hidden = true;
      resolve({ text, name: file ? file.name : "" });
    });
  });
}
