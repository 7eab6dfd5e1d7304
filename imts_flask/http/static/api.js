// The one wrapper around fetch: the bearer token (kept in this tab's session storage), ETags (an
// unchanged answer is a 304 with no body: an idle page costs almost nothing) and the API's one
// error shape, {status, error, message, errors: [{field, reason}]}.

const BASE = "/api/v1/training";
const TOKEN_KEY = "imts-token";
const cache = new Map(); // url -> {etag, body}: the latest answers, a bounded few
const CACHE_ENTRIES = 64;
const CACHE_BYTES = 65536; // a larger answer (a log page catching up) is not kept

export class ApiError extends Error {
  constructor(status, body) {
    // The API's shape says {message}; OpenAI's (on /v1) says {error: {message}}.
    const message = body && (body.message || (body.error && body.error.message));
    super(message || `the service answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  cache.clear();
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function parse(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

// POSTs `body` and hands each server-sent event's data (parsed JSON) to `onEvent` as it arrives;
// an event carrying {error} (the answer broke off) is thrown as an ApiError.
// `base`: the API's (default) or OpenAI's face, "/v1".
export async function stream(path, body, onEvent, base = BASE) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const response = await fetch(base + path, { method: "POST", headers, body: JSON.stringify(body), cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, await parse(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      const data = line.startsWith("data:") ? line.slice(5).trim() : "";
      if (!data || data === "[DONE]") continue;
      const event = JSON.parse(data);
      // A failure once the answer had started: the stream's last event says what went wrong.
      if (event.error) throw new ApiError(502, { message: event.error.message, errors: [] });
      onEvent(event);
    }
  }
}

export async function api(path, { method = "GET", body, headers: extra = {} } = {}) {
  const url = BASE + path;
  const headers = { ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const cached = method === "GET" ? cache.get(url) : undefined;
  if (cached) headers["If-None-Match"] = cached.etag;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", // the ETags are ours to keep
  });
  if (response.status === 304 && cached) return cached.body;
  if (response.status === 204) return null;
  const data = await parse(response);
  if (response.status === 401) {
    forgetToken();
    document.dispatchEvent(new CustomEvent("imts-auth-required"));
  }
  if (!response.ok) throw new ApiError(response.status, data);
  const etag = response.headers.get("ETag");
  const size = Number(response.headers.get("Content-Length") || CACHE_BYTES + 1);
  if (method === "GET" && etag && size <= CACHE_BYTES) {
    cache.delete(url);
    cache.set(url, { etag, body: data });
    if (cache.size > CACHE_ENTRIES) cache.delete(cache.keys().next().value);
  }
  return data;
}

// POSTs a multipart form with XMLHttpRequest (fetch reports no upload progress), calling
// `onProgress(sent, total)` as the bytes go; resolves with the JSON answer, rejects with ApiError.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", BASE + path);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => onProgress(event.loaded, event.total));
    xhr.addEventListener("load", () => {
      if (xhr.status === 401) {
        forgetToken();
        document.dispatchEvent(new CustomEvent("imts-auth-required"));
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new Error("the upload was cut off")));
    xhr.send(form);
  });
}
