// Compare runs (?jobs=a,b,...): their loss (and eval loss) on one step-aligned chart, the request
// settings that differ between them (only those), and their final figures side by side.

import { api } from "./api.js";
import { duration, el, failed, number, statusBadge, tokenGate } from "./common.js";
import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";

const COLOURS = ["#c0392b", "#2563eb", "#16a34a", "#9333ea", "#d97706", "#0891b2", "#be185d", "#4b5563"];
const MAX_RUNS = COLOURS.length;
const ids = [...new Set((new URLSearchParams(location.search).get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean))].slice(0, MAX_RUNS);

async function points(jobId) {
  const all = [];
  let since = 0;
  for (;;) {
    const page = await api(`/jobs/${encodeURIComponent(jobId)}/metrics?since_step=${since}&limit=10000`);
    all.push(...page.points);
    if (page.points.length < 10000) return all;
    since = page.next_since_step;
  }
}

// {"custom_config.cutoff_len": 64, "epochs": 3, ...}: a request flattened, camelCase made snake_case.
function flat(request, prefix = "") {
  const out = {};
  const snake = (name) => (prefix.startsWith("custom_config") ? name : name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
  for (const [name, value] of Object.entries(request || {})) {
    const key = prefix + snake(name);
    if (value && typeof value === "object" && !Array.isArray(value)) Object.assign(out, flat(value, `${key}.`));
    else out[key] = Array.isArray(value) ? value.join(",") : value;
  }
  return out;
}

function drawChart(runs) {
  const steps = [...new Set(runs.flatMap((r) => r.points.map((p) => p.step)))].sort((a, b) => a - b);
  const index = new Map(steps.map((s, i) => [s, i]));
  const data = [steps];
  const series = [{ label: "step" }];
  runs.forEach((run, i) => {
    const loss = new Array(steps.length).fill(null);
    const evalLoss = new Array(steps.length).fill(null);
    for (const p of run.points) {
      loss[index.get(p.step)] = p.loss ?? null;
      evalLoss[index.get(p.step)] = p.eval_loss ?? null;
    }
    data.push(loss);
    series.push({ label: `${run.id} loss`, stroke: COLOURS[i], width: 2, spanGaps: true });
    if (evalLoss.some((v) => v !== null)) {
      data.push(evalLoss);
      series.push({ label: `${run.id} eval loss`, stroke: COLOURS[i], dash: [6, 4], spanGaps: true, points: { show: true, size: 6 } });
    }
  });
  const box = document.getElementById("compare-chart");
  const chart = new uPlot({ width: Math.max(280, box.clientWidth), height: 300, scales: { x: { time: false } }, axes: [{ label: "step" }, { label: "loss" }], series }, data, box);
  box.dataset.curves = String(series.length - 1);
  new ResizeObserver(() => chart.setSize({ width: Math.max(280, box.clientWidth), height: 300 })).observe(box);
}

function drawDiffer(runs) {
  const flats = runs.map((r) => flat(r.request));
  const keys = [...new Set(flats.flatMap((f) => Object.keys(f)))].sort();
  const shown = (v) => (v === undefined || v === null ? "(default)" : String(v));
  const differ = keys.filter((k) => new Set(flats.map((f) => shown(f[k]))).size > 1);
  document.querySelector("#differ thead").replaceChildren(el("tr", {}, el("th", {}, "setting"), ...runs.map((r) => el("th", {}, r.id))));
  document.querySelector("#differ tbody").replaceChildren(
    ...differ.map((k) => el("tr", { dataset: { key: k } }, el("td", {}, k), ...flats.map((f) => el("td", {}, shown(f[k]))))),
  );
  document.getElementById("same").textContent = differ.length ? `${keys.length - differ.length} other setting(s) are the same` : "every setting is the same";
}

function drawFinals(runs) {
  const seconds = (s) => (s.started_at && s.finished_at ? (Date.parse(s.finished_at) - Date.parse(s.started_at)) / 1000 : null);
  const rows = [
    ["status", (s) => statusBadge(s.status)],
    ["model / dataset", (s) => `${s.model_name} / ${s.dataset}`],
    ["final loss", (s) => number(s.current_loss)],
    ["eval loss (best)", (s) => (s.eval_loss === null ? "" : `${number(s.eval_loss)} (${number(s.best_eval_loss)})`)],
    ["steps", (s) => (s.total_steps ? `${s.current_step || 0} of ${s.total_steps}` : "")],
    ["run time", (s) => duration(seconds(s))],
    ["GPU hours", (s) => number((s.gpu_seconds || 0) / 3600, 3)],
  ];
  document.querySelector("#finals thead").replaceChildren(el("tr", {}, el("th", {}, ""), ...runs.map((r, i) => el("th", { className: `run-${i}` }, el("a", { href: `/dashboard/jobs/${encodeURIComponent(r.id)}` }, r.id)))));
  document.querySelector("#finals tbody").replaceChildren(...rows.map(([name, value]) => el("tr", {}, el("td", {}, name), ...runs.map((r) => el("td", {}, value(r.status))))));
}

async function start() {
  if (ids.length < 2) {
    document.getElementById("compared").textContent = "pick two or more jobs in the jobs list (their check boxes), then Compare";
    return;
  }
  const runs = await Promise.all(
    ids.map(async (id) => {
      const [status, request, series] = await Promise.all([api(`/jobs/${encodeURIComponent(id)}`), api(`/jobs/${encodeURIComponent(id)}/request?defaults=true`), points(id)]);
      return { id, status, request, points: series };
    }),
  );
  document.getElementById("compared").textContent = `${runs.length} runs`;
  drawChart(runs);
  drawDiffer(runs);
  drawFinals(runs);
}

tokenGate(() => start().catch(failed));
start().catch(failed);
