// One job: status and progress, the loss curve (with the held-out eval loss, and the learning
// rate) from its metrics series, events, checkpoints, the export, its evaluations
// (evaluations.js), and training.log followed by offset like `tail -f`; stop, resume and export
// buttons that ask first and show the API's own answer.

import { api } from "./api.js";
import { bytes, duration, el, every, failed, notice, number, setProgress, statusBadge, tokenGate } from "./common.js";
import { evaluationsPanel } from "./evaluations.js";
import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";

const jobId = decodeURIComponent(location.pathname.split("/").pop());
const LOG_LIMIT = 400_000; // characters kept on the page: the log's tail
let job = null;

// -- status ----------------------------------------------------------------------------------

function fact(name, value) {
  return value === "" || value === null || value === undefined ? [] : [el("div", {}, el("dt", {}, name), el("dd", {}, value))];
}

// What a waiting job waits for, and what holds it: "capacity held by deploy_ab12cd34".
function waiting(state) {
  const named = [...(state.held_by || [])];
  if (state.held_by_others) named.push(`${state.held_by_others} run(s) of another team`);
  return named.length ? `${state.waiting_for} held by ${named.join(" and ")}` : state.waiting_for;
}

function drawStatus(state) {
  job = state;
  document.getElementById("job-id").textContent = state.job_id;
  document.getElementById("clone").href = `/dashboard/new?${new URLSearchParams({ clone: state.job_id })}`;
  document.getElementById("job-status").replaceChildren(statusBadge(state.status));
  const step = state.total_steps ? `step ${state.current_step || 0} of ${state.total_steps}` : "";
  setProgress(document.getElementById("progress"), state.progress, `${Math.round(state.progress * 100)}% ${step}`);
  const origin = state.resumed_from;
  document.getElementById("facts").replaceChildren(
    ...fact("model / dataset / stage", [state.model_name, state.dataset, state.stage, state.finetuning_type].join(" / ")),
    ...fact("loss", number(state.current_loss)),
    ...fact("eval loss (best)", state.eval_loss === null ? "" : `${number(state.eval_loss)} (${number(state.best_eval_loss)} at ${state.best_checkpoint || "-"})`),
    ...fact("stopped early", state.stopped_early ? `yes, at step ${state.current_step}` : ""),
    ...fact("learning rate", number(state.learning_rate, 3)),
    ...fact("epoch", number(state.epoch, 3)),
    ...fact("tokens / s", state.tokens_per_second),
    ...fact("samples / s", state.samples_per_second),
    ...fact("ETA", state.status === "running" ? duration(state.eta_seconds) : ""),
    ...fact("queue position", state.queue_position ? `${state.queue_position}${state.waiting_for ? ` (waiting for ${waiting(state)})` : ""}` : ""),
    ...fact("team / priority", `${state.tenant || "-"} / ${state.priority}${state.preemptible ? "" : ", not preemptible"}`),
    ...fact("preempted", state.preemptions ? `${state.preemptions} time(s), last by ${state.preempted_by}` : ""),
    ...fact("GPU / CPU hours", `${number(state.gpu_seconds / 3600, 3)} / ${number(state.cpu_seconds / 3600, 3)}`),
    ...fact("GPUs", (state.gpu_ids || []).join(",")),
    ...fact("GPU memory", state.gpu_memory_mb === null ? "" : `${state.gpu_memory_mb} MB`),
    ...fact("attempt", `${state.attempt} of ${state.max_attempts}`),
    ...fact("resumed from", origin ? `${origin.job_id} ${origin.checkpoint}` : ""),
    ...fact("created", state.created_at),
    ...fact("started", state.started_at),
    ...fact("finished", state.finished_at),
    ...fact("disk", bytes(state.disk_bytes)),
  );
  const failure = document.getElementById("failure");
  failure.hidden = !state.error;
  failure.replaceChildren(el("strong", {}, state.error || ""), el("pre", {}, (state.log_tail || []).join("\n")));
  document.getElementById("stop").disabled = !["pending", "running"].includes(state.status);
  document.getElementById("resume").disabled = !["stopped", "failed"].includes(state.status);
  document.getElementById("export").disabled = state.status !== "completed";
  const choice = document.getElementById("export-checkpoint");
  if (state.best_checkpoint && choice.options.length === 1) choice.append(el("option", { value: "best" }, `best (${state.best_checkpoint})`));
  const exported = state.export;
  document.getElementById("export-state").textContent = exported
    ? `${exported.status}: ${exported.checkpoint} to ${exported.model_path || exported.export_dir}${exported.error ? ` (${exported.error})` : ""}`
    : "none yet";
}

async function refreshStatus() {
  const state = await api(`/jobs/${encodeURIComponent(jobId)}`);
  if (state !== job) drawStatus(state);
}

// -- the loss curve --------------------------------------------------------------------------

const series = [[], [], [], []]; // steps, loss, learning rate, eval loss (at evaluation steps)
let lastStep = 0;
let chart = null;

function makeChart() {
  const box = document.getElementById("chart");
  chart = new uPlot(
    {
      width: Math.max(280, box.clientWidth),
      height: 260,
      scales: { x: { time: false }, lr: { auto: true } },
      axes: [
        { label: "step" },
        { label: "loss" },
        {
          scale: "lr",
          side: 1,
          label: "learning rate",
          grid: { show: false },
          size: 70,
          values: (u, ticks) => ticks.map((v) => (v === 0 ? "0" : v.toExponential(2))),
        },
      ],
      series: [
        { label: "step" },
        { label: "loss", stroke: "#c0392b", width: 2 },
        { label: "learning rate", stroke: "#2c7be5", scale: "lr", dash: [4, 4] },
        { label: "eval loss", stroke: "#16a34a", width: 2, spanGaps: true, points: { show: true, size: 6 } },
      ],
    },
    series,
    box,
  );
  new ResizeObserver(() => chart.setSize({ width: Math.max(280, box.clientWidth), height: 260 })).observe(box);
}

async function refreshSeries() {
  // The last step is read again: its evaluation is logged after its training loss.
  const since = Math.max(0, lastStep - 1);
  const page = await api(`/jobs/${encodeURIComponent(jobId)}/metrics?since_step=${since}&limit=10000`);
  if (!page.points.length) return;
  while (series[0].length && series[0][series[0].length - 1] > since) series.forEach((s) => s.pop());
  for (const point of page.points) {
    series[0].push(point.step);
    series[1].push(point.loss);
    series[2].push(point.learning_rate);
    series[3].push(point.eval_loss);
  }
  lastStep = page.next_since_step;
  if (!chart) makeChart();
  else chart.setData(series);
  document.getElementById("chart").dataset.points = String(series[0].length);
  document.getElementById("chart").dataset.evalPoints = String(series[3].filter((v) => v !== null && v !== undefined).length);
}

// -- events, checkpoints ---------------------------------------------------------------------

let eventsShown = null;
async function refreshEvents() {
  const page = await api(`/jobs/${encodeURIComponent(jobId)}/events`);
  if (page === eventsShown) return;
  eventsShown = page;
  document.getElementById("events").replaceChildren(
    ...page.events.map((e) =>
      el("li", {}, statusBadge(e.status), ` ${e.at}`, e.attempt ? ` · attempt ${e.attempt}` : "", e.reason ? ` · ${e.reason}` : "", e.resumed_from ? ` · from ${e.resumed_from}` : ""),
    ),
  );
}

let checkpointsShown = null;
async function refreshCheckpoints() {
  const page = await api(`/jobs/${encodeURIComponent(jobId)}/checkpoints`);
  if (page === checkpointsShown) return;
  checkpointsShown = page;
  document.querySelector("#checkpoints tbody").replaceChildren(
    ...page.checkpoints.map((c) =>
      el(
        "tr",
        { dataset: { checkpoint: c.name } },
        el("td", {}, c.name, c.best ? " ★ best" : ""),
        el("td", { className: "num" }, c.step),
        el("td", { className: "num" }, c.eval_loss === null || c.eval_loss === undefined ? "-" : number(c.eval_loss)),
        el("td", {}, c.complete ? "yes" : c.problem || "no"),
        el("td", {}, c.modified_at),
      ),
    ),
  );
}

// -- the log, followed -----------------------------------------------------------------------

let logOffset = 0;
async function followLog() {
  const pre = document.getElementById("log");
  for (;;) {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/logs?offset=${logOffset}&limit=262144`);
    if (page.next_offset === logOffset) return;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.append(document.createTextNode(page.data)); // text: a log line with markup stays a line
    if (pre.textContent.length > LOG_LIMIT) pre.textContent = pre.textContent.slice(-LOG_LIMIT);
    logOffset = page.next_offset;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    if (page.eof) return;
  }
}

// -- actions: they ask first, then show what the API answered ----------------------------------

async function act(question, call) {
  if (!window.confirm(question)) return;
  try {
    const answer = await call();
    notice(answer && answer.message ? answer.message : "done", "ok");
    return answer;
  } catch (error) {
    failed(error);
  }
}

document.getElementById("stop").addEventListener("click", () =>
  act(`Stop job ${jobId}? It saves a checkpoint and can be resumed.`, () => api(`/jobs/${encodeURIComponent(jobId)}/stop`, { method: "POST" })).then(refreshStatus),
);
document.getElementById("resume").addEventListener("click", async () => {
  const created = await act(`Resume job ${jobId} from its newest checkpoint, as a new job?`, () =>
    api(`/jobs/${encodeURIComponent(jobId)}/resume`, { method: "POST" }),
  );
  if (created) location.assign(`/dashboard/jobs/${encodeURIComponent(created.job_id)}`);
});
document.getElementById("export").addEventListener("click", () => {
  const dir = document.getElementById("export-dir").value.trim() || jobId;
  const checkpoint = document.getElementById("export-checkpoint").value;
  act(`Export the ${checkpoint} weights of job ${jobId} to models/exports/${dir}, merging the LoRA adapter?`, () =>
    api(`/jobs/${encodeURIComponent(jobId)}/export`, { method: "POST", body: { export_dir: dir, merge_lora: true, checkpoint } }),
  ).then(refreshStatus);
});

const evaluations = evaluationsPanel(jobId);
tokenGate(() => {
  job = eventsShown = checkpointsShown = null;
  evaluations.reset();
});
// The page is served only for a well-formed job id (the server checks it): fetch its parts.
every(2000, refreshStatus);
every(2000, refreshSeries);
every(1000, followLog);
every(4000, refreshEvents);
every(5000, refreshCheckpoints);
every(3000, evaluations.refresh);
