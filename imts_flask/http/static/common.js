// What both pages share: elements built with text (job data never becomes markup), the notice
// line, the token form, progress bars and formats.

import { ApiError, api, setToken } from "./api.js";

// el("td", {className: "x"}, "text", child) — strings become text nodes, never HTML.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function notice(message, kind = "info") {
  const box = document.getElementById("notice");
  box.textContent = message;
  box.className = `notice ${kind}`;
  box.hidden = !message;
}

export function failed(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return; // the token form says it
    const fields = ((error.body && error.body.errors) || []).map((e) => `${e.field}: ${e.reason}`);
    notice([error.message, ...fields].join(" — "), "error");
  } else {
    notice(`the service cannot be reached (${error.message})`, "error");
  }
}

// Marks the page with the token's role (GET /me): a viewer's page hides what changes things
// (elements of class "changes"); the API refuses them anyway.
export function showRole() {
  api("/me")
    .then((me) => {
      document.body.dataset.role = me.role || "open";
    })
    .catch(() => {});
}

// Asks for the token when a data call was refused; `retry` runs once one is given.
export function tokenGate(retry) {
  showRole();
  const form = document.getElementById("token-form");
  document.addEventListener("imts-auth-required", () => {
    form.hidden = false;
    notice("a valid bearer token is required", "error");
    document.getElementById("token").focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    setToken(input.value.trim());
    input.value = "";
    form.hidden = true;
    notice("");
    showRole();
    retry();
  });
}

export function statusBadge(status) {
  return el("span", { className: `status status-${status}` }, status);
}

export function progressBar(fraction, label) {
  const bar = el("div", { className: "progress" });
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  setProgress(bar, fraction, label);
  return bar;
}

export function setProgress(bar, fraction, label) {
  const percent = Math.round((fraction || 0) * 1000) / 10;
  let fill = bar.querySelector(".fill");
  if (!fill) bar.append((fill = el("div", { className: "fill" })), el("span", { className: "label" }));
  fill.style.width = `${percent}%`; // CSSOM, allowed by the page's policy (no inline style markup)
  bar.querySelector(".label").textContent = label || `${percent}%`;
  bar.setAttribute("aria-valuenow", String(percent));
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export function number(value, digits = 4) {
  return value === null || value === undefined ? "" : Number(value).toPrecision(digits);
}

export function bytes(value) {
  if (value === null || value === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Runs `task` now and then every `ms`, one run at a time, while the page is open.
export function every(ms, task) {
  const loop = async () => {
    try {
      await task();
    } catch (error) {
      failed(error);
    }
    setTimeout(loop, ms);
  };
  loop();
}
