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

/**
 * Call the REST API. `query` values that are arrays repeat the parameter; empty values are
 * left out. Resolves to the parsed JSON (null for 204); rejects with an ApiError whose
 * message is ready to show.
 */
export async function api(path, { method = "GET", query = {}, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(key, v));
    else if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(key, value);
    }
  }
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const where = `${method} ${url.pathname}`;
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(0, `Cannot reach Kimball (${where}): ${error.message}`);
  }
  let text = "";
  try {
    text = await response.text();
  } catch (error) {
    throw new ApiError(response.status, `${where}: the answer was cut off (${error.message})`);
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.status === 401) {
    listeners.unauthorized(token);
    const message = token
      ? "The token was refused: enter a valid API token."
      : "A token is needed: enter the API token.";
    throw new ApiError(401, message, data);
  }
  listeners.authorized();
  if (!response.ok) {
    const message = describe(response.status, response.statusText, data, text);
    throw new ApiError(response.status, `HTTP ${response.status}: ${message} — ${where}`, data);
  }
  if (response.status === 204) return null;
  if (data === null) {
    throw new ApiError(response.status, `${where}: the answer is not JSON`);
  }
  return data;
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
