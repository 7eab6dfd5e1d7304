// The jobs table (newest first, or by finish time or final loss; filtered by status and a search
// of model and dataset; paged) and the GPU panel, refreshed by polling with ETags: while nothing
// changes, each poll is a 304 and nothing is redrawn. Ticked rows go to the comparison page.

import { api } from "./api.js";
import { duration, el, every, failed, notice, number, progressBar, statusBadge, tokenGate, bytes } from "./common.js";

const PAGE = 25;
const query = new URLSearchParams(location.search);
let offset = Math.max(0, Number(query.get("offset")) || 0);
const filter = document.getElementById("status-filter");
filter.value = query.get("status") || "";
const search = document.getElementById("search");
search.value = query.get("q") || "";
const sort = document.getElementById("sort");
sort.value = query.get("sort") || "created";
const picked = new Set(); // jobs ticked for the comparison, across pages
const compare = document.getElementById("compare");
let shown = null; // the listing drawn last: a 304 gives back the same object

function address() {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  if (filter.value) params.set("status", filter.value);
  if (search.value.trim()) params.set("q", search.value.trim());
  if (sort.value !== "created") params.set("sort", sort.value);
  return params;
}

function tick(job) {
  const box = el("input", { type: "checkbox", checked: picked.has(job.job_id), className: "pick" });
  box.setAttribute("aria-label", `compare ${job.job_id}`);
  box.addEventListener("change", () => {
    if (box.checked) picked.add(job.job_id);
    else picked.delete(job.job_id);
    compare.disabled = picked.size < 2;
    compare.textContent = picked.size ? `compare selected (${picked.size})` : "compare selected";
  });
  return box;
}

function row(job) {
  const link = el("a", { href: `/dashboard/jobs/${encodeURIComponent(job.job_id)}` }, job.job_id);
  const eta = job.status === "running" ? duration(job.eta_seconds) : "";
  const what = [job.model_name, job.dataset, job.stage].filter(Boolean).join(" / ");
  const step = job.total_steps ? `${job.current_step || 0}/${job.total_steps}` : undefined;
  return el(
    "tr",
    { dataset: { job: job.job_id, status: job.status } },
    el("td", {}, tick(job)),
    el("td", {}, link),
    el("td", {}, statusBadge(job.status)),
    el("td", {}, progressBar(job.progress, step)),
    el("td", { className: "num" }, number(job.current_loss)),
    el("td", {}, eta),
    el("td", {}, what),
    el("td", {}, (job.gpu_ids || []).join(",")),
    el("td", {}, job.created_at || ""),
  );
}

async function refreshJobs() {
  const listing = await api(`/jobs?${address()}`);
  if (listing === shown) return;
  shown = listing;
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...listing.jobs.map(row));
  if (!listing.jobs.length) body.append(el("tr", {}, el("td", { colSpan: 9, className: "muted" }, "no jobs")));
  document.getElementById("count").textContent = `${listing.total} job(s)`;
  const last = Math.min(offset + PAGE, listing.total);
  document.getElementById("page").textContent = listing.total ? `${offset + 1}-${last} of ${listing.total}` : "";
  document.getElementById("newer").disabled = offset === 0;
  document.getElementById("older").disabled = last >= listing.total;
}

let gpusShown = null;
async function refreshGpus() {
  const reading = await api("/gpus");
  if (reading === gpusShown) return;
  gpusShown = reading;
  const panel = document.getElementById("gpu-panel");
  panel.hidden = !reading.gpus.length;
  document.getElementById("gpus").replaceChildren(
    ...reading.gpus.map((gpu) =>
      el(
        "div",
        { className: `card${gpu.lost ? " lost" : ""}`, dataset: { gpu: gpu.id } },
        el("strong", {}, `GPU ${gpu.id}`),
        el("span", { className: "muted" }, ` ${gpu.name || ""}`),
        progressBar(gpu.utilization, `${Math.round((gpu.utilization || 0) * 100)}% busy`),
        el("div", {}, `memory ${bytes(gpu.memory_used_bytes)} of ${bytes(gpu.memory_total_bytes)}`),
        el("div", {}, gpu.error || (gpu.job_ids.length ? "held by " : "free")),
        ...gpu.job_ids.map((id) => el("a", { href: `/dashboard/jobs/${encodeURIComponent(id)}` }, id, " ")),
      ),
    ),
  );
}

function reload() {
  const params = address();
  history.replaceState(null, "", `?${params}`);
  shown = null;
  refreshJobs().catch(failed);
}

for (const control of [filter, sort]) {
  control.addEventListener("change", () => {
    offset = 0;
    reload();
  });
}
let typing = null;
search.addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => {
    offset = 0;
    reload();
  }, 300);
});
compare.addEventListener("click", () => {
  location.assign(`/dashboard/compare?${new URLSearchParams({ jobs: [...picked].join(",") })}`);
});
document.getElementById("newer").addEventListener("click", () => {
  offset = Math.max(0, offset - PAGE);
  reload();
});
document.getElementById("older").addEventListener("click", () => {
  offset += PAGE;
  reload();
});
tokenGate(() => {
  shown = gpusShown = null;
  notice("");
});
every(3000, refreshJobs);
every(5000, refreshGpus);
