// Datasets: the list, an upload with a progress bar (XMLHttpRequest: the bytes as they go), a
// preview of the first rows as a table (long values cut, shown as text), and delete after a
// confirmation; the API's refusals (409 in use, 403 not yours) are shown as its message.

import { api, upload } from "./api.js";
import { bytes, el, failed, notice, setProgress, tokenGate } from "./common.js";

const PREVIEW_ROWS = 5;
const CUT = 120; // characters of a value shown in the preview table

function cut(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > CUT ? `${text.slice(0, CUT)}…` : text;
}

function row(dataset) {
  const preview = el("button", { type: "button", className: "preview-button" }, "preview");
  preview.addEventListener("click", () => showPreview(dataset.name).catch(failed));
  const remove = el("button", { type: "button", className: "delete-button changes", disabled: dataset.source !== "upload" }, "delete");
  remove.addEventListener("click", () => removeDataset(dataset.name).catch(failed));
  return el(
    "tr",
    { dataset: { name: dataset.name } },
    el("td", {}, dataset.name),
    el("td", {}, dataset.source),
    el("td", {}, dataset.format),
    el("td", {}, (dataset.stages || []).join(", ")),
    el("td", { className: "num" }, dataset.rows ?? ""),
    el("td", { className: "num" }, bytes(dataset.bytes)),
    el("td", {}, dataset.created_at || ""),
    el("td", {}, preview, " ", remove),
  );
}

async function refresh() {
  const listed = await api("/datasets");
  document.querySelector("#datasets tbody").replaceChildren(...listed.datasets.map(row));
  document.getElementById("dataset-count").textContent = `${listed.datasets.length} dataset(s)`;
}

async function showPreview(name) {
  const described = await api(`/datasets/${encodeURIComponent(name)}?preview=${PREVIEW_ROWS}`);
  const rows = described.preview || [];
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  document.getElementById("preview-title").textContent = `${name}: the first ${rows.length} row(s)`;
  document.getElementById("preview-note").textContent = described.preview_truncated ? "(values past 1000 characters were cut by the service)" : "";
  document.querySelector("#preview thead").replaceChildren(el("tr", {}, ...columns.map((c) => el("th", {}, c))));
  document.querySelector("#preview tbody").replaceChildren(
    ...rows.map((r) => el("tr", {}, ...columns.map((c) => el("td", { title: r[c] === undefined ? "" : cut(r[c]) }, r[c] === undefined ? "" : cut(r[c]))))),
  );
  document.getElementById("preview-panel").hidden = false;
}

async function removeDataset(name) {
  if (!confirm(`Delete the dataset ${name}? Jobs that used it keep their own copy.`)) return;
  await api(`/datasets/${encodeURIComponent(name)}`, { method: "DELETE" });
  notice(`deleted ${name}`, "ok");
  document.getElementById("preview-panel").hidden = true;
  await refresh();
}

const form = document.getElementById("upload");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("upload-file").files[0];
  const name = document.getElementById("upload-name").value.trim();
  if (!file || !name) {
    notice("choose a file and give it a name", "error");
    return;
  }
  const body = new FormData();
  body.append("name", name);
  const format = document.getElementById("upload-format").value;
  if (format) body.append("format", format);
  body.append("file", file);
  const bar = document.getElementById("upload-progress");
  const send = document.getElementById("upload-send");
  const state = document.getElementById("upload-state");
  bar.hidden = false;
  send.disabled = true;
  notice("");
  const overwrite = document.getElementById("upload-overwrite").checked ? "?overwrite=true" : "";
  try {
    const described = await upload(`/datasets${overwrite}`, body, (sent, total) => {
      const fraction = total ? sent / total : 0;
      setProgress(bar, fraction, sent < total ? `${bytes(sent)} of ${bytes(total)}` : "checking every row ...");
      bar.dataset.sent = String(sent);
    });
    setProgress(bar, 1, `${described.rows} rows checked`);
    state.textContent = `uploaded ${described.name}: ${described.rows} rows, ${described.format}, stages ${described.stages.join(", ")}`;
    form.reset();
    await refresh();
  } catch (error) {
    bar.hidden = true;
    state.textContent = "";
    failed(error);
  } finally {
    send.disabled = false;
  }
});

tokenGate(() => refresh().catch(failed));
refresh().catch(failed);
