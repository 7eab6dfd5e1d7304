// The deployments table (polled with ETags), a stop button per live one, and a chat box on a ready
// one: the service calls the deployment with its key and streams the answer back; every piece of
// it goes on the page as text.

import { api, stream } from "./api.js";
import { el, every, failed, notice, statusBadge, tokenGate } from "./common.js";

let shown = null;
let chatting = null; // the deployment the chat box talks to
let turns = []; // this tab's conversation with it

function serves(d) {
  const source = d.source || {};
  return source.model ? source.model : `${source.job_id || ""} ${source.checkpoint || ""}`.trim();
}

function row(d) {
  const live = !["stopped", "failed"].includes(d.status);
  const stop = el("button", { type: "button", className: "stop changes", disabled: !live }, "stop");
  stop.addEventListener("click", () => {
    stop.disabled = true;
    api(`/deployments/${encodeURIComponent(d.deployment_id)}`, { method: "DELETE" })
      .then(() => refresh(true))
      .catch(failed);
  });
  const chat = el("button", { type: "button", className: "chat-open changes", disabled: d.status !== "ready" }, "chat");
  chat.addEventListener("click", () => openChat(d));
  return el(
    "tr",
    { dataset: { deployment: d.deployment_id, status: d.status } },
    el("td", {}, d.deployment_id),
    el("td", {}, statusBadge(d.status)),
    el("td", {}, d.model || ""),
    el("td", {}, serves(d)),
    el("td", {}, el("code", {}, d.base_url || "")),
    el("td", { className: "num" }, String(d.requests_served || 0)),
    el("td", {}, (d.gpu_ids || []).join(",")),
    el("td", {}, d.created_at || ""),
    el("td", {}, chat, " ", stop, d.error ? el("div", { className: "muted" }, d.error) : null),
  );
}

async function refresh(force = false) {
  const listing = await api("/deployments?limit=100");
  if (listing === shown && !force) return;
  shown = listing;
  const body = document.querySelector("#deployments tbody");
  body.replaceChildren(...listing.deployments.map(row));
  if (!listing.deployments.length) {
    body.append(el("tr", {}, el("td", { colSpan: 9, className: "muted" }, "no deployments")));
  }
  document.getElementById("count").textContent = `${listing.total} deployment(s)`;
}

function openChat(d) {
  chatting = d;
  turns = [];
  document.getElementById("chat-panel").hidden = false;
  document.getElementById("chat-model").textContent = `${d.model} (${d.deployment_id})`;
  document.getElementById("chat-log").replaceChildren();
  document.getElementById("chat-input").focus();
}

function bubble(role, text) {
  const node = el("div", { className: `turn ${role}`, dataset: { role } }, el("strong", {}, `${role}: `));
  const content = el("span", { className: "content" }, text);
  node.append(content);
  document.getElementById("chat-log").append(node);
  return content;
}

document.getElementById("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const text = input.value.trim();
  if (!text || !chatting) return;
  input.value = "";
  turns.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.parentNode.dataset.streaming = "true";
  try {
    await stream(`/deployments/${encodeURIComponent(chatting.deployment_id)}/chat`, { messages: turns }, (chunk) => {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
    });
    turns.push({ role: "assistant", content: answer.textContent });
  } catch (error) {
    failed(error);
  } finally {
    answer.parentNode.dataset.streaming = "false";
  }
});

tokenGate(() => {
  shown = null;
  notice("");
});
every(3000, refresh);
