// Every data request of the page: JSON, with the token the user gave (if any).

const TOKEN_KEY = "kimball.token";

export class ApiError extends Error {
  constructor(status, message, body = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: the token lives for this page only
  }
}

let memoryToken = "";

export function getToken() {
  const store = storage();
  return (store ? store.getItem(TOKEN_KEY) : memoryToken) || "";
}

export function setToken(token) {
  const store = storage();
  memoryToken = token;
  if (!store) return;
  if (token) store.setItem(TOKEN_KEY, token);
  else store.removeItem(TOKEN_KEY);
}

const listeners = { unauthorized: () => {}, authorized: () => {} };

/** Called on every 401 (the token is missing or wrong) and on every other answer. */
export function onAuthChange(unauthorized, authorized) {
  listeners.unauthorized = unauthorized;
  listeners.authorized = authorized;
}

function describe(status, statusText, data, text) {
  const error = data && typeof data === "object" ? data.error : undefined;
  if (typeof error === "string") return error;
  if (error && typeof error === "object") {
    const { what, ...details } = error;
    const extra = Object.entries(details)
      .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`)
      .join(", ");
    const message = typeof what === "string" && what ? what : statusText || "request refused";
    return extra ? `${message} (${extra})` : message;
  }
  const snippet = (text || "").trim().slice(0, 200);
  return snippet || statusText || "no answer body";
}

function urlOf(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(key, v));
    else if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(key, value);
    }
  }
  return url;
}

async function refusal(response, token, where) {
  let text = "";
  try {
    text = await response.text();
  } catch (error) {
    return new ApiError(response.status, `${where}: the answer was cut off (${error.message})`);
  }
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401) {
    listeners.unauthorized(token);
    const message = token
      ? "The token was refused: enter a valid API token."
      : "A token is needed: enter the API token.";
    return new ApiError(401, message, data);
  }
  const message = describe(response.status, response.statusText, data, text);
  return new ApiError(response.status, `HTTP ${response.status}: ${message} — ${where}`, data);
}

/**
 * Send a request with the token; resolves to the Response when it succeeded (2xx), else
 * rejects with an ApiError whose message is ready to show.
 */
async function send(path, { method = "GET", query = {}, body, headers = {}, signal } = {}) {
  const url = urlOf(path, query);
  const token = getToken();
  const sent = { ...headers };
  if (token) sent.Authorization = `Bearer ${token}`;
  const init = { method, headers: sent, cache: "no-store", signal };
  if (body !== undefined) {
    sent["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const where = `${method} ${url.pathname}`;
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Cannot reach Kimball (${where}): ${error.message}`);
  }
  if (!response.ok) throw await refusal(response, token, where);
  listeners.authorized();
  return response;
}

/**
 * Call the REST API. `query` values that are arrays repeat the parameter; empty values are
 * left out. Resolves to the parsed JSON (null for 204); rejects with an ApiError whose
 * message is ready to show.
 */
export async function api(path, { method = "GET", query = {}, body } = {}) {
  const response = await send(path, {
    method,
    query,
    body,
    headers: { Accept: "application/json" },
  });
  const where = `${method} ${new URL(path, window.location.origin).pathname}`;
  let text = "";
  try {
    text = await response.text();
  } catch (error) {
    throw new ApiError(response.status, `${where}: the answer was cut off (${error.message})`);
  }
  if (response.status === 204) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(response.status, `${where}: the answer is not JSON`);
  }
}

/**
 * Follow a Server-Sent Events route with fetch (EventSource cannot send the token's
 * header). Calls onEvent({event, id, data}) per event, data parsed; resolves when the
 * stream ends, rejects with an ApiError when it is refused. `lastEventId` resumes.
 */
export async function followEvents(path, { query = {}, lastEventId, signal, onOpen, onEvent }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await send(path, { query, headers, signal });
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const fields = {};
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a comment: the heartbeat
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${text}` : text;
      }
      if (fields.data === undefined) continue;
      onEvent({ event: fields.event || "message", id: fields.id, data: JSON.parse(fields.data) });
    }
  }
}

/** base64 of a value's JSON (UTF-8), as /v0/features takes its objects. */
export function base64Json(value) {
  const bytes = new TextEncoder().encode(JSON.stringify(value));
  let binary = "";
  bytes.forEach((b) => {
    binary += String.fromCharCode(b);
  });
  return btoa(binary);
}
