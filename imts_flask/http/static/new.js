// The new-job form: the guide's fields, choices read from the API (models, datasets with their
// stages, templates, custom_config's bounds), submitted to POST /jobs with one Idempotency-Key per
// filled form (a double click makes one job). The API's 400 is shown beside the field it names.
// ?clone=<job_id> fills the form with that job's request (GET /jobs/{id}/request).

import { api } from "./api.js";
import { el, failed, notice, tokenGate } from "./common.js";

const form = document.getElementById("new-job");
const submit = document.getElementById("submit");
const state = document.getElementById("submit-state");
const COMMON_KEYS = ["cutoff_len", "max_samples", "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "save_steps", "logging_steps", "lora_dropout"];
let key = crypto.randomUUID(); // a new one only once a job was made from this form
let datasets = [];

// One labelled control with the place for its error: name is the API's field path.
function control(parent, name, label, input, hint = "") {
  input.name = name;
  input.id = `f-${name}`;
  parent.append(
    el("div", { className: "field" },
      el("label", { htmlFor: input.id }, label),
      input,
      hint ? el("span", { className: "muted hint" }, hint) : null,
      el("span", { className: "field-error", dataset: { errorFor: name } })),
  );
  return input;
}

function select(values, blank) {
  const node = el("select");
  if (blank !== undefined) node.append(el("option", { value: "" }, blank));
  for (const [value, text] of values) node.append(el("option", { value }, text));
  return node;
}

function number(min, max, step = "any", value = "") {
  const node = el("input", { type: "number", step, value });
  if (min !== null && min !== undefined) node.min = String(min);
  if (max !== null && max !== undefined) node.max = String(max);
  return node;
}

function stagesOf(names) {
  const chosen = datasets.find((d) => d.name === names);
  return chosen ? chosen.stages : ["sft", "pt", "rm", "dpo", "kto"];
}

function limitStages() {
  const stage = form.elements.stage;
  const allowed = stagesOf(form.elements.dataset.value);
  for (const option of stage.options) option.disabled = !allowed.includes(option.value);
  if (!allowed.includes(stage.value) && allowed.length) stage.value = allowed[0];
}

async function build() {
  const [models, listed, templates, custom] = await Promise.all([api("/models"), api("/datasets"), api("/templates"), api("/custom-config")]);
  datasets = listed.datasets;
  const basics = document.getElementById("basics");
  const modelChoices = models.models.map((m) => [m.name, `${m.name} (${m.source})`]);
  for (const r of models.registered || []) {
    modelChoices.push([`${r.name}:${r.latest}`, `${r.name}:${r.latest} (registered)`]);
    for (const alias of Object.keys(r.aliases || {})) modelChoices.push([`${r.name}@${alias}`, `${r.name}@${alias} (registered)`]);
  }
  control(basics, "model_name", "model", select(modelChoices));
  control(basics, "dataset", "dataset", select(datasets.map((d) => [d.name, `${d.name} (${d.format}${d.rows === null || d.rows === undefined ? "" : `, ${d.rows} rows`})`])));
  control(basics, "stage", "stage", select(["sft", "pt", "rm", "dpo", "kto"].map((s) => [s, s])));
  control(basics, "finetuning_type", "finetuning type", select(["lora", "full", "freeze"].map((s) => [s, s])));
  control(basics, "custom_config.template", "template", select(templates.templates.map((t) => [t, t]), "the model's default"));
  form.elements.dataset.addEventListener("change", limitStages);
  const hyper = document.getElementById("hyper");
  control(hyper, "epochs", "epochs", number(0, 10000, "any", "3"), "0 < epochs <= 10000");
  control(hyper, "batch_size", "batch size", number(1, 1024, "1", "2"), "1-1024");
  control(hyper, "learning_rate", "learning rate", number(0, 1, "any", "0.00005"), "0 < lr <= 1");
  control(hyper, "lora_rank", "LoRA rank", number(1, 1024, "1", "8"), "1-1024");
  control(hyper, "lora_alpha", "LoRA alpha", number(1, 4096, "1", "16"), "1-4096");
  const bounds = new Map(custom.keys.map((k) => [k.key, k]));
  const customBox = document.getElementById("custom");
  for (const name of COMMON_KEYS) {
    const rule = bounds.get(name);
    if (!rule) continue;
    const input = rule.type === "choice" ? select(rule.choices.map((c) => [String(c), String(c)]), "default") : number(rule.min, rule.max, rule.type === "int" ? "1" : "any");
    const hint = rule.type === "choice" ? "" : `${rule.min} to ${rule.max}`;
    control(customBox, `custom_config.${name}`, name, input, hint).dataset.kind = rule.type;
  }
  const judging = document.getElementById("judging");
  control(judging, "validation.val_size", "validation: held-out share", number(0, 1), "e.g. 0.1; empty: none");
  control(judging, "validation.eval_steps", "evaluate every N steps", number(1, null, "1"), "default: save_steps");
  control(judging, "early_stopping.patience", "early stopping patience", number(1, null, "1"), "evaluations without improvement");
  control(judging, "early_stopping.min_delta", "early stopping min_delta", number(0, null), "");
  const sharing = document.getElementById("sharing");
  control(sharing, "priority", "priority", select([["normal", "normal"], ["high", "high"], ["low", "low"]]));
  const preemptible = el("input", { type: "checkbox", checked: true });
  control(sharing, "preemptible", "preemptible", preemptible, "a high job may stop it with a checkpoint");
  limitStages();
}

// The request body from the form: empty fields left out (the API's defaults apply).
function body() {
  const out = {};
  for (const input of form.querySelectorAll("[name]")) {
    if (input.type === "checkbox") {
      if (!input.checked) out[input.name] = false;
      continue;
    }
    if (input.value === "") continue;
    const numeric = input.type === "number" || (input.tagName === "SELECT" && input.name === "custom_config.quantization_bit");
    const value = numeric ? Number(input.value) : input.value;
    const path = input.name.split(".");
    let at = out;
    for (const part of path.slice(0, -1)) at = at[part] = at[part] || {};
    at[path[path.length - 1]] = value;
  }
  return out;
}

function clearErrors() {
  for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
  for (const input of form.querySelectorAll(".invalid")) input.classList.remove("invalid");
}

// Each error beside its field (text, never markup); those no field shows go to the notice line.
function showErrors(error) {
  const rest = [];
  for (const e of (error.body && error.body.errors) || []) {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(e.field)}"]`);
    if (slot) {
      slot.textContent = e.reason;
      const input = document.getElementById(`f-${e.field}`);
      if (input) input.classList.add("invalid");
    } else rest.push(`${e.field}: ${e.reason}`);
  }
  notice([error.message, ...rest].join(" — "), "error");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (submit.disabled) return;
  submit.disabled = true;
  state.textContent = "submitting ...";
  clearErrors();
  notice("");
  try {
    const created = await api("/jobs", { method: "POST", body: body(), headers: { "Idempotency-Key": key } });
    key = crypto.randomUUID();
    state.textContent = `created ${created.job_id}`;
    location.assign(`/dashboard/jobs/${encodeURIComponent(created.job_id)}`);
  } catch (error) {
    state.textContent = "";
    if (error.body && error.body.errors) showErrors(error);
    else failed(error);
    submit.disabled = false;
  }
});

// Fill the form with a job's request (its snake_case or camelCase fields).
async function fill(jobId) {
  const request = await api(`/jobs/${encodeURIComponent(jobId)}/request`);
  const snake = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  const set = (name, value) => {
    const input = form.elements[name];
    if (!input || value === null || value === undefined) return;
    if (input.type === "checkbox") input.checked = value !== false;
    else {
      if (input.tagName === "SELECT" && ![...input.options].some((o) => o.value === String(value))) input.append(el("option", { value: String(value) }, String(value)));
      input.value = String(value);
    }
  };
  for (const [name, value] of Object.entries(request)) {
    const field = snake(name);
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [inner, innerValue] of Object.entries(value)) set(`${field}.${field === "custom_config" ? inner : snake(inner)}`, innerValue);
    } else set(field, Array.isArray(value) ? value.join(",") : value);
  }
  limitStages();
  document.getElementById("form-title").textContent = "New training job, cloned";
  document.getElementById("clone-of").textContent = `from ${jobId}`;
}

async function start() {
  await build();
  const clone = new URLSearchParams(location.search).get("clone");
  if (clone) await fill(clone);
}

tokenGate(() => start().catch(failed));
start().catch(failed);
