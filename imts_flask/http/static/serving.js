// The shared servers (polled with ETags) with their loaded adapters and traffic, and a chat box that
// takes any model name the caller may call (/v1/models fills its suggestions): the answer streams
// from /v1/chat/completions and goes on the page as text.

import { api, stream } from "./api.js";
import { el, every, failed, notice, statusBadge, tokenGate } from "./common.js";

let shown = null;
const conversations = new Map(); // model name -> this tab's turns with it

function row(s) {
  const adapters = Object.keys(s.adapters || {});
  return el(
    "tr",
    { dataset: { server: s.server_id, status: s.status } },
    el("td", {}, s.server_id),
    el("td", {}, statusBadge(s.status)),
    el("td", {}, s.base_model || ""),
    el("td", { className: "adapters" }, adapters.length ? adapters.join(", ") : "—"),
    el("td", { className: "num" }, String(s.adapter_loads || 0)),
    el("td", { className: "num" }, String(s.requests_served || 0)),
    el("td", { className: "num" }, String(s.restarts || 0)),
    el("td", {}, s.last_request_at || ""),
    el("td", {}, s.stop_reason || s.error || ""),
  );
}

async function refresh(force = false) {
  const listing = await api("/servers?limit=100");
  if (listing === shown && !force) return;
  shown = listing;
  const body = document.querySelector("#servers tbody");
  body.replaceChildren(...listing.servers.map(row));
  if (!listing.servers.length) {
    body.append(el("tr", {}, el("td", { colSpan: 9, className: "muted" }, "no server yet: the first request starts one")));
  }
  document.getElementById("count").textContent = `${listing.total} server(s)`;
}

async function suggestions() {
  const headers = {};
  const token = sessionStorage.getItem("imts-token");
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const response = await fetch("/v1/models", { headers, cache: "no-store" });
  if (!response.ok) return;
  const listing = await response.json();
  document.getElementById("model-names").replaceChildren(...listing.data.map((m) => el("option", { value: m.id })));
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
  const model = document.getElementById("chat-model").value.trim();
  const input = document.getElementById("chat-input");
  const text = input.value.trim();
  if (!text || !model) return;
  input.value = "";
  const turns = conversations.get(model) || [];
  conversations.set(model, turns);
  turns.push({ role: "user", content: text });
  bubble("user", `(${model}) ${text}`);
  const answer = bubble("assistant", "");
  answer.parentNode.dataset.streaming = "true";
  try {
    await stream("/chat/completions", { model, messages: turns, max_tokens: 128, stream: true }, (chunk) => {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
    }, "/v1");
    turns.push({ role: "assistant", content: answer.textContent });
  } catch (error) {
    answer.parentNode.dataset.failed = "true";
    failed(error);
  } finally {
    answer.parentNode.dataset.streaming = "false";
    refresh(true).catch(() => {});
  }
});

tokenGate(() => {
  shown = null;
  notice("");
  suggestions().catch(() => {});
});
suggestions().catch(() => {});
every(3000, refresh);
