// Models: the base models a job may name, the registered versions with what each came from (its
// job, checkpoint, base model and dataset) and aliases, and the deployments serving them.

import { api } from "./api.js";
import { bytes, el, failed, statusBadge, tokenGate } from "./common.js";

function jobLink(jobId) {
  return jobId ? el("a", { href: `/dashboard/jobs/${encodeURIComponent(jobId)}` }, jobId) : "";
}

async function refresh() {
  const [listed, deployments] = await Promise.all([api("/models"), api("/deployments")]);
  document.querySelector("#base-models tbody").replaceChildren(
    ...listed.models.map((m) =>
      el("tr", { dataset: { model: m.name } },
        el("td", {}, m.name), el("td", {}, m.source), el("td", {}, m.architecture || ""),
        el("td", { className: "num" }, m.parameters ? `${(m.parameters / 1e6).toFixed(1)} M` : ""),
        el("td", { className: "num" }, bytes(m.bytes)), el("td", {}, m.template || "")),
    ),
  );
  const details = await Promise.all((listed.registered || []).map((r) => api(`/models/${encodeURIComponent(r.name)}`)));
  const rows = [];
  for (const model of details) {
    for (const v of model.versions) {
      rows.push(
        el("tr", { dataset: { version: `${v.name}:${v.version}` } },
          el("td", {}, `${v.name}:${v.version}`), el("td", {}, (v.aliases || []).join(", ")),
          el("td", {}, jobLink(v.job_id)), el("td", {}, v.checkpoint || ""), el("td", {}, v.base_model || ""),
          el("td", {}, v.dataset || ""), el("td", {}, v.weights_kind || ""), el("td", {}, v.created_at || "")),
      );
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 8, className: "muted" }, "none yet: register a completed job's weights (POST /models)")));
  document.querySelector("#versions tbody").replaceChildren(...rows);
  const served = deployments.deployments.map((d) =>
    el("tr", { dataset: { deployment: d.deployment_id } },
      el("td", {}, d.name), el("td", {}, statusBadge(d.status)), el("td", {}, d.model),
      el("td", {}, d.source && d.source.job_id ? jobLink(d.source.job_id) : (d.source && d.source.model) || ""),
      el("td", {}, d.base_url || "")),
  );
  if (!served.length) served.push(el("tr", {}, el("td", { colSpan: 5, className: "muted" }, "no deployments")));
  document.querySelector("#model-deployments tbody").replaceChildren(...served);
}

tokenGate(() => refresh().catch(failed));
refresh().catch(failed);
