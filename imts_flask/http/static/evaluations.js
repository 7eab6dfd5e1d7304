// A job's evaluations: a form that queues one, each one's figures for the tuned and the base model
// side by side with the difference, and a browser of its samples (prompt, label, both answers),
// a page at a time. Every text from the service goes on the page as text.

import { api } from "./api.js";
import { el, failed, notice, number, statusBadge } from "./common.js";

const METRICS = ["bleu_4", "rouge_1", "rouge_2", "rouge_l", "loss", "perplexity", "accuracy"];
const PAGE = 5;

function signed(value) {
  if (value === null || value === undefined) return "-";
  return (value > 0 ? "+" : "") + number(value);
}

function figuresTable(results) {
  const tuned = results.tuned || {};
  const base = results.base || {};
  const difference = results.difference || {};
  const shown = METRICS.filter((m) => tuned[m] !== undefined || base[m] !== undefined);
  if (!shown.length) return el("p", { className: "muted" }, "no figures yet");
  return el(
    "table",
    { className: "figures" },
    el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", {}, "tuned"), el("th", {}, "base"), el("th", {}, "difference"))),
    el(
      "tbody",
      {},
      ...shown.map((m) =>
        el("tr", { dataset: { metric: m } }, el("td", {}, m), el("td", { className: "num" }, number(tuned[m])), el("td", { className: "num" }, number(base[m])), el("td", { className: "num" }, signed(difference[m]))),
      ),
    ),
  );
}

export function evaluationsPanel(jobId) {
  const base = `/jobs/${encodeURIComponent(jobId)}/evaluations`;
  let shown = null;
  let browsing = null; // {id, offset}

  function card(evaluation) {
    const what = `${evaluation.checkpoint} on ${evaluation.dataset}, ≤ ${evaluation.max_samples} rows`;
    const phase = evaluation.status === "running" && evaluation.phase ? ` · ${evaluation.phase}` : "";
    const samples = el("button", { type: "button", className: "samples", disabled: !evaluation.phases_done.includes("tuned-predict") }, "samples");
    samples.addEventListener("click", () => browse(evaluation.evaluation_id, 0));
    return el(
      "div",
      { className: "card evaluation", dataset: { evaluation: evaluation.evaluation_id, status: evaluation.status } },
      el("div", {}, el("strong", {}, evaluation.evaluation_id), " ", statusBadge(evaluation.status), phase),
      el("div", { className: "muted" }, what, evaluation.baseline ? " · with baseline" : ""),
      evaluation.error ? el("div", { className: "failure" }, evaluation.error) : "",
      figuresTable(evaluation.results),
      el("div", {}, samples),
    );
  }

  async function refresh() {
    const page = await api(`${base}?limit=20`);
    if (page === shown) return;
    shown = page;
    const box = document.getElementById("evaluations");
    box.replaceChildren(...(page.evaluations.length ? page.evaluations.map(card) : [el("p", { className: "muted" }, "none yet")]));
  }

  async function browse(id, offset) {
    let page;
    try {
      page = await api(`${base}/${encodeURIComponent(id)}/samples?offset=${offset}&limit=${PAGE}`);
    } catch (error) {
      failed(error);
      return;
    }
    browsing = { id, offset };
    const box = document.getElementById("samples");
    box.hidden = false;
    const previous = el("button", { type: "button", disabled: offset === 0 }, "previous");
    const next = el("button", { type: "button", disabled: offset + PAGE >= (page.total || 0) }, "next");
    previous.addEventListener("click", () => browse(id, Math.max(0, offset - PAGE)));
    next.addEventListener("click", () => browse(id, offset + PAGE));
    box.replaceChildren(
      el("h3", {}, `Samples of ${id}: ${offset + 1}–${offset + page.samples.length} of ${page.total ?? "?"}`),
      ...page.samples.map((s) =>
        el(
          "div",
          { className: "sample", dataset: { index: String(s.index) } },
          el("pre", { className: "prompt" }, s.prompt || ""),
          el("dl", {}, ...["label", "tuned", "base"].filter((who) => s[who] !== null && s[who] !== undefined).map((who) => el("div", { className: who }, el("dt", {}, who), el("dd", {}, s[who])))),
        ),
      ),
      el("div", { className: "pager" }, previous, next),
    );
  }

  document.getElementById("evaluate").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = {
      dataset: form.elements.dataset.value.trim(),
      checkpoint: form.elements.checkpoint.value,
      baseline: form.elements.baseline.checked,
      max_samples: Number(form.elements.max_samples.value) || 200,
    };
    try {
      const created = await api(base, { method: "POST", body });
      notice(`evaluation ${created.evaluation_id} queued`, "ok");
      refresh();
    } catch (error) {
      failed(error);
    }
  });

  return {
    refresh,
    reset() {
      shown = null;
      if (browsing) browse(browsing.id, browsing.offset);
    },
  };
}
