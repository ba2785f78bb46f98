// Kimball's web UI: analytics, live events, goals, predictions, nudges and feature flags over
// the REST API.
import { ApiError, api, base64Json, followEvents, getToken, onAuthChange, setToken } from "./api.js";
import { barChart, lineChart, seriesStyle } from "./charts.js";
import { $, clear, formatCount, formatNumber, formatPercent, formatRatio, h } from "./dom.js";

const NAMESPACE_KEY = "kimball.namespace";
const VIEWS = ["analytics", "live", "goals", "predictions", "nudges", "flags"];
const MAX_CHIPS = 200; // what-if events shown at once (the filter finds the others)
const TOP_COMBINATIONS = 10;
const TOP_BARS = 15;
const WEEKLY_SERIES_SHOWN = 6;

const state = {
  // The URL's (a link to a view of a namespace) first, then this browser's last choice.
  namespace: namespaceInUrl() ?? remembered(NAMESPACE_KEY) ?? "default",
  view: "analytics",
  counters: [], // the analytics view's named counters
  goals: [],
  weeklyHidden: new Set(),
  predictions: {}, // goal -> {event: {bayes}}
  whatif: new Set(),
  whatifExtra: [],
  flags: [],
  editing: null, // the name of the flag in the form, or null for a new one
};

// ---------------------------------------------------------------- the namespace in the URL

/** The namespace the URL names (`?namespace=`), or null. */
function namespaceInUrl() {
  return new URL(window.location.href).searchParams.get("namespace");
}

/** Put the namespace in the URL (the view stays in the hash), so the view can be linked;
 * a new history entry when the user picked it, so Back returns to the previous one. */
function namespaceToUrl(namespace, { replace = false } = {}) {
  const url = new URL(window.location.href);
  if (url.searchParams.get("namespace") === namespace) return;
  url.searchParams.set("namespace", namespace);
  if (replace) window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
}

function remembered(key) {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

function remember(key, value) {
  try {
    window.localStorage.setItem(key, value);
  } catch {
    // storage disabled: the choice lasts for this page
  }
}

// ---------------------------------------------------------------- errors and messages

function showError(box, error) {
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

function hideError(box) {
  box.hidden = true;
  box.textContent = "";
}

function viewError(name) {
  return $(`#view-${name} > .error`);
}

/** Every view's error box, under its title: where loading it says what went wrong. */
function addViewErrors() {
  for (const name of VIEWS) {
    $(`#view-${name} > h1`).after(h("div", { class: "error", role: "alert", hidden: true }));
  }
}

function showBanner(error) {
  const banner = $("#banner");
  clear(banner).append(
    h("span", {}, error instanceof Error ? error.message : String(error)),
    h(
      "button",
      {
        type: "button",
        class: "link",
        onclick: () => {
          banner.hidden = true;
        },
      },
      "Dismiss",
    ),
  );
  banner.hidden = false;
}

function flash(el, text) {
  el.textContent = text;
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

window.addEventListener("unhandledrejection", (event) => showBanner(event.reason));
window.addEventListener("error", (event) => showBanner(event.message));

// ---------------------------------------------------------------- the token

function updateTokenButton() {
  const button = $("#token-toggle");
  button.textContent = getToken() ? "Token ✓" : "Token";
  button.setAttribute("aria-expanded", String(!$("#token-panel").hidden));
}

function openTokenPanel(message) {
  const panel = $("#token-panel");
  const text = $("#token-message");
  text.textContent = message || "";
  text.hidden = !message;
  panel.hidden = false;
  panel.classList.toggle("needed", Boolean(message));
  updateTokenButton();
}

function closeTokenPanel() {
  $("#token-panel").hidden = true;
  updateTokenButton();
}

onAuthChange(
  (sentToken) => {
    const message = sentToken
      ? "The token was refused (401): enter a valid API token."
      : "A token is needed (401): enter the API token to see the data.";
    openTokenPanel(message);
    if (document.activeElement === document.body || !document.activeElement) $("#token").focus();
  },
  () => {},
);

function setupToken() {
  $("#token").value = getToken();
  $("#token-toggle").addEventListener("click", () => {
    if ($("#token-panel").hidden) openTokenPanel("");
    else closeTokenPanel();
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("#token").value.trim());
    closeTokenPanel();
    reloadAll();
  });
  $("#token-forget").addEventListener("click", () => {
    setToken("");
    $("#token").value = "";
    reloadAll();
  });
  updateTokenButton();
}

// ---------------------------------------------------------------- namespaces and views

async function loadNamespaces() {
  const select = $("#namespace");
  let names = null;
  try {
    names = (await api("/v0/namespaces")).namespaces ?? [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showBanner(error);
  }
  // A namespace named by the URL is kept (a link to one with no data yet); a remembered one
  // that no longer exists gives way to one that does.
  if (names && names.length && !names.includes(state.namespace) && !namespaceInUrl()) {
    state.namespace = names.includes("default") ? "default" : names[0];
  }
  namespaceToUrl(state.namespace, { replace: true });
  const all = names && names.length ? names : [state.namespace];
  if (!all.includes(state.namespace)) all.unshift(state.namespace);
  clear(select).append(
    ...all.map((name) => h("option", { value: name }, name === "" ? "(empty)" : name)),
  );
  select.value = state.namespace;
}

const generations = {};

async function loadView(name) {
  const generation = (generations[name] = (generations[name] ?? 0) + 1);
  const isCurrent = () => generations[name] === generation;
  const section = $(`#view-${name}`);
  const box = viewError(name);
  section.setAttribute("aria-busy", "true");
  try {
    await LOADERS[name](isCurrent);
    if (isCurrent()) hideError(box);
  } catch (error) {
    if (isCurrent()) showError(box, error);
  } finally {
    if (isCurrent()) section.setAttribute("aria-busy", "false");
  }
}

function showView() {
  const wanted = window.location.hash.replace(/^#/, "");
  state.view = VIEWS.includes(wanted) ? wanted : "analytics";
  for (const name of VIEWS) $(`#view-${name}`).hidden = name !== state.view;
  if (state.view !== "live") stopLive(); // a stream only while it is watched
  for (const tab of document.querySelectorAll(".tabs a")) {
    if (tab.dataset.view === state.view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  loadView(state.view);
}

async function reloadAll() {
  await loadNamespaces();
  showView();
}

function setNamespace(namespace) {
  state.namespace = namespace;
  remember(NAMESPACE_KEY, state.namespace);
  state.whatif.clear();
  state.whatifExtra = [];
  state.weeklyHidden.clear();
  clear($("#whatif-result"));
  clear($("#nudge-result"));
  resetLive();
  showView();
}

function setupNavigation() {
  window.addEventListener("hashchange", showView);
  $("#namespace").addEventListener("change", (event) => {
    namespaceToUrl(event.target.value);
    setNamespace(event.target.value);
  });
  window.addEventListener("popstate", () => {
    const linked = namespaceInUrl();
    if (linked === null || linked === state.namespace) return;
    if (![...$("#namespace").options].some((o) => o.value === linked)) {
      $("#namespace").append(h("option", { value: linked }, linked));
    }
    $("#namespace").value = linked;
    setNamespace(linked);
  });
  $("#refresh").addEventListener("click", reloadAll);
}

function ns() {
  return { namespace: state.namespace };
}

// ---------------------------------------------------------------- analytics

function chips(names) {
  if (!names.length) return h("em", { class: "muted" }, "no prior event");
  return h(
    "span",
    { class: "chips" },
    names.map((name) => h("span", { class: "chip" }, name)),
  );
}

async function loadAnalytics(isCurrent) {
  const [analytics, goals] = await Promise.all([
    api("/v0/analytics", { query: ns() }),
    api("/v0/goals", { query: ns() }),
  ]);
  if (!isCurrent()) return;
  const counts = analytics.counts ?? [];
  const internal = counts.find((c) => c.type === "internal");
  state.counters = counts.filter((c) => c.type === "named");
  state.goals = goals.goals ?? [];
  const total = $("#total-users");
  total.textContent = formatCount(internal ? internal.count : 0);
  total.dataset.value = String(internal ? internal.count : 0);
  $("#event-total").textContent = formatCount(state.counters.length);
  $("#goal-total").textContent = formatCount(state.goals.length);
  renderCounters();
  renderWeekly(
    counts.filter((c) => c.type === "weekly").map((c) => ({ ...c, name: weeklyEvent(c) })),
  );
}

/** The event of a weekly counter, which the REST API names as the original did: after the
 * event, a space, then its year and week run together ("signup 20262"). */
function weeklyEvent(counter) {
  return counter.name.slice(0, -` ${counter.year}${counter.week}`.length);
}

function renderCounters() {
  const filter = $("#counter-filter").value.trim().toLowerCase();
  const goals = new Set(state.goals);
  const rows = state.counters
    .filter((c) => !filter || c.name.toLowerCase().includes(filter))
    .sort((a, b) => b.count - a.count || a.name.localeCompare(b.name));
  const shown = rows.slice(0, TOP_BARS);
  barChart(
    $("#events-chart"),
    shown.map((c) => ({ label: c.name, value: c.count })),
    {
      format: formatCount,
      caption: "Unique users per event",
      emptyText: state.counters.length
        ? "No event matches the filter."
        : "No event tracked in this namespace yet.",
    },
  );
  const body = clear($("#counters-table tbody"));
  for (const counter of rows) {
    const sum = counter.value?.sum ?? 0;
    body.append(
      h(
        "tr",
        { dataset: { name: counter.name } },
        h(
          "td",
          { class: "name" },
          counter.name,
          goals.has(counter.name) ? h("span", { class: "badge" }, "goal") : null,
        ),
        h(
          "td",
          { class: "num count", dataset: { value: counter.count } },
          formatCount(counter.count),
        ),
        h("td", { class: "num sum", dataset: { value: sum } }, formatNumber(sum)),
      ),
    );
  }
  if (!rows.length) {
    body.append(h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No event to show.")));
  }
  $("#events-chart-note").textContent =
    rows.length > shown.length
      ? `The chart shows the ${shown.length} largest of ${rows.length} events.`
      : "";
}

function isoWeeksIn(year) {
  const day = new Date(Date.UTC(year, 0, 1)).getUTCDay();
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  return day === 4 || (leap && day === 3) ? 53 : 52;
}

function weekLabel(year, week) {
  return `${year}-W${String(week).padStart(2, "0")}`;
}

/** Every ISO week from the first to the last one seen (gaps are weeks with no user), or
 * only the weeks seen when they span more than five years. */
function weekAxis(weeks) {
  const sorted = [...weeks].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const [first, last] = [sorted[0], sorted[sorted.length - 1]];
  const span = (last[0] - first[0]) * 53 + (last[1] - first[1]);
  if (span > 260) return sorted;
  const axis = [];
  let [year, week] = first;
  while (year < last[0] || (year === last[0] && week <= last[1])) {
    axis.push([year, week]);
    week += 1;
    if (week > isoWeeksIn(year)) {
      year += 1;
      week = 1;
    }
  }
  return axis;
}

/** The ISO week (UTC, as the server counts weeks) that holds `date`: [year, week]. */
function isoWeekOf(date) {
  const day = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const weekday = day.getUTCDay() || 7;
  day.setUTCDate(day.getUTCDate() + 4 - weekday); // the Thursday of its week decides the year
  const yearStart = Date.UTC(day.getUTCFullYear(), 0, 1);
  return [day.getUTCFullYear(), Math.ceil(((day - yearStart) / 86400000 + 1) / 7)];
}

function renderWeekly(weekly) {
  const root = clear($("#weekly"));
  if (!weekly.length) {
    root.append(
      h(
        "div",
        { class: "empty-state" },
        h("p", {}, h("strong", {}, "No weekly counters in this namespace.")),
        h(
          "p",
          {},
          "Weekly counts are kept only for events matched by a counter rule with ",
          h("code", {}, "date_cohort => weekly"),
          " in the config file (see the README's Configuration section).",
        ),
      ),
    );
    return;
  }
  const byName = new Map();
  const seen = new Map();
  for (const counter of weekly) {
    const key = weekLabel(counter.year, counter.week);
    seen.set(key, [counter.year, counter.week]);
    if (!byName.has(counter.name)) byName.set(counter.name, new Map());
    byName.get(counter.name).set(key, counter.count);
  }
  const axis = weekAxis(seen.values()).map(([y, w]) => weekLabel(y, w));
  const currentWeek = weekLabel(...isoWeekOf(new Date()));
  // The week in progress has only its users so far: drawn as such, not as a drop.
  const partialLast = axis[axis.length - 1] === currentWeek;
  const names = [...byName.keys()].sort((a, b) => {
    const total = (n) => [...byName.get(n).values()].reduce((x, y) => x + y, 0);
    return total(b) - total(a) || a.localeCompare(b);
  });
  if (state.weeklyHidden.size === 0)
    names.slice(WEEKLY_SERIES_SHOWN).forEach((n) => state.weeklyHidden.add(n));
  const chart = h("div", { class: "chart", id: "weekly-chart" });
  const legend = h("div", { class: "legend", role: "group", "aria-label": "Events shown" });
  const draw = () => {
    // colours follow each event's place in the legend
    const series = names
      .map((name, index) => ({
        name,
        colour: index,
        values: axis.map((w) => byName.get(name).get(w) ?? 0),
      }))
      .filter(({ name }) => !state.weeklyHidden.has(name));
    lineChart(chart, axis, series, {
      format: formatCount,
      caption: "Weekly unique users per event",
      partialLast,
    });
  };
  names.forEach((name, index) => {
    const box = h("input", {
      type: "checkbox",
      checked: !state.weeklyHidden.has(name),
      onchange: (event) => {
        if (event.target.checked) state.weeklyHidden.delete(name);
        else state.weeklyHidden.add(name);
        draw();
      },
    });
    legend.append(
      h(
        "label",
        { class: "legend-item", style: seriesStyle(index) },
        box,
        h("span", { class: "swatch" }),
        name,
      ),
    );
  });
  const rows = weekly
    .slice()
    .sort((a, b) => a.year - b.year || a.week - b.week || a.name.localeCompare(b.name))
    .map((c) =>
      h(
        "tr",
        { dataset: { name: c.name, week: weekLabel(c.year, c.week) } },
        h("td", {}, weekLabel(c.year, c.week)),
        h("td", {}, c.name),
        h("td", { class: "num", dataset: { value: c.count } }, formatCount(c.count)),
      ),
    );
  root.append(
    legend,
    chart,
    partialLast
      ? h(
          "p",
          { class: "hint", id: "weekly-partial-note" },
          `${currentWeek} is the current week and not over: its point (dashed) counts the users so far.`,
        )
      : null,
    h(
      "details",
      {},
      h("summary", {}, "Weekly numbers"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "data", id: "weekly-table" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}, "ISO week"),
              h("th", {}, "Event"),
              h("th", { class: "num" }, "Unique users"),
            ),
          ),
          h("tbody", {}, rows),
        ),
      ),
    ),
  );
  draw();
}

// ---------------------------------------------------------------- live events

const LIVE_ROWS = 200; // rows kept on screen, newest first
const RATE_WINDOW_SECONDS = 10;
const LIVE_RETRY_MS = 3000;

const live = {
  controller: null, // the open stream's, to close it
  paused: false,
  lastId: null, // the last event's sequence: where a resume starts
  arrivals: [], // arrival times (ms) within the rate window
  timer: null,
  retry: null,
  received: 0,
};

function liveNames() {
  return $("#live-filter")
    .value.split(",")
    .map((name) => name.trim())
    .filter(Boolean);
}

function setLiveStatus(text, kind = "") {
  const status = $("#live-status");
  status.textContent = text;
  status.dataset.kind = kind;
}

function showRate() {
  const now = performance.now();
  live.arrivals = live.arrivals.filter((t) => now - t < RATE_WINDOW_SECONDS * 1000);
  const rate = live.arrivals.length / RATE_WINDOW_SECONDS;
  const shown = $("#live-rate");
  shown.textContent = rate < 10 ? rate.toFixed(1) : formatCount(rate);
  shown.dataset.value = String(rate);
}

function addLiveEvent(data, id) {
  live.lastId = id ?? live.lastId;
  live.arrivals.push(performance.now());
  live.received += 1;
  $("#live-count").textContent = formatCount(live.received);
  const body = $("#live-table tbody");
  body.querySelector("tr.empty-row")?.remove();
  const when = data.datetime ? new Date(data.datetime) : new Date();
  body.prepend(
    h(
      "tr",
      { class: "live-event", dataset: { name: data.event_name, sequence: data.sequence } },
      h("td", {}, h("time", { datetime: when.toISOString() }, when.toLocaleTimeString())),
      h("td", {}, h("span", { class: "chip" }, data.event_name)),
      h(
        "td",
        { class: "user" },
        data.user_id ?? h("span", { class: "muted", title: "replayed: the log keeps no user id" }, `#${data.user_hash.slice(0, 8)}`),
      ),
      h("td", {}, data.namespace),
      h("td", { class: "num" }, formatCount(data.sequence)),
    ),
  );
  while (body.rows.length > LIVE_ROWS) body.lastElementChild.remove();
  showRate();
}

function liveEmptyRow() {
  return h(
    "tr",
    { class: "empty-row" },
    h("td", { colspan: 5, class: "empty" }, "Waiting for events… they appear here as they are tracked."),
  );
}

/** Close the stream (leaving the view, pausing, a new filter); the rows stay. */
function stopLive() {
  clearTimeout(live.retry);
  live.retry = null;
  clearInterval(live.timer);
  live.timer = null;
  if (live.controller) live.controller.abort();
  live.controller = null;
}

/** A new namespace: a new list, from now on. */
function resetLive() {
  stopLive();
  live.lastId = null;
  live.arrivals = [];
  live.received = 0;
  $("#live-count").textContent = "0";
  clear($("#live-table tbody")).append(liveEmptyRow());
  showRate();
}

/** Open the stream: from the last event seen when resuming (nothing missed while paused or
 * disconnected), else from now. */
function startLive({ resume = false } = {}) {
  stopLive();
  if (live.paused) {
    setLiveStatus("Paused: new events are not shown until you resume.", "paused");
    return;
  }
  const controller = new AbortController();
  live.controller = controller;
  live.timer = setInterval(showRate, 1000);
  setLiveStatus("Connecting…");
  const names = liveNames();
  followEvents("/v0/events:stream", {
    query: { namespace: state.namespace, event_names: names },
    lastEventId: resume ? live.lastId : null,
    signal: controller.signal,
    onOpen: () => {
      hideError(viewError("live"));
      setLiveStatus(
        names.length ? `Live: showing ${names.join(", ")} as they arrive.` : "Live: showing every event as it arrives.",
        "live",
      );
    },
    onEvent: ({ event, id, data }) => {
      if (event === "error") throw new ApiError(data.status, `The stream ended: ${data.error.what}`);
      addLiveEvent(data, id);
    },
  })
    .then(() => {
      if (live.controller === controller) reconnectLive(controller, "The stream ended.");
    })
    .catch((error) => {
      if (error.name === "AbortError" || live.controller !== controller) return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
        stopLive();
        showError(viewError("live"), error);
        setLiveStatus("Stopped.", "error");
        return;
      }
      reconnectLive(controller, error.message);
    });
}

/** A stream that ended or failed (the server restarting, too many streams): try again in a
 * moment from the last event seen. */
function reconnectLive(controller, why) {
  if (live.controller !== controller) return;
  controller.abort();
  live.controller = null;
  setLiveStatus(`${why} Reconnecting in ${LIVE_RETRY_MS / 1000} s…`, "error");
  live.retry = setTimeout(() => startLive({ resume: true }), LIVE_RETRY_MS);
}

async function loadLive() {
  if (!live.controller && !live.retry) startLive({ resume: live.lastId !== null });
}

function setupLive() {
  resetLive();
  $("#live-pause").addEventListener("click", (event) => {
    live.paused = !live.paused;
    event.currentTarget.setAttribute("aria-pressed", String(live.paused));
    event.currentTarget.textContent = live.paused ? "Resume" : "Pause";
    startLive({ resume: true });
  });
  $("#live-filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    resetLive();
    startLive();
  });
}

// ---------------------------------------------------------------- goals

function combinationOrder(a, b) {
  return (
    b.count - a.count ||
    a.events.length - b.events.length ||
    a.events.join("\u0000").localeCompare(b.events.join("\u0000"))
  );
}

async function loadGoals(isCurrent) {
  const [goals, analytics] = await Promise.all([
    api("/v0/goals", { query: ns() }),
    api("/v0/analytics", { query: ns() }),
  ]);
  if (!isCurrent()) return;
  const named = new Map(
    (analytics.counts ?? []).filter((c) => c.type === "named").map((c) => [c.name, c]),
  );
  const list = clear($("#goals-list"));
  const eventUsers = new Map([...named].map(([name, c]) => [name, c.count]));
  const names = [...(goals.goals ?? [])].sort((a, b) => a.localeCompare(b));
  if (!names.length) {
    list.append(
      h(
        "div",
        { class: "empty-state" },
        h(
          "p",
          {},
          "No goal in this namespace yet: create one above, or send an event with ensure_goal.",
        ),
      ),
    );
  }
  for (const goal of names) list.append(goalCard(goal, named.get(goal), eventUsers));
}

/**
 * Each event's conversion to a goal: of the users who did the event, the share who reached
 * the goal after it. The goal's counter holds, per event, how many of its users had done
 * that event first (single_event_counts); the event's own counter, how many did it. This is
 * one division of two numbers the API already gives, for display, so it stays here; the
 * model's smoothed probabilities are the server's (Predictions). Both counts are estimates
 * (Bloom filters), so a share is capped at 100%.
 */
function conversions(counter, eventUsers) {
  return (counter.single_event_counts ?? [])
    .filter((single) => eventUsers.get(single.name) > 0)
    .map((single) => {
      const users = eventUsers.get(single.name);
      return { name: single.name, reached: single.count, users, share: Math.min(1, single.count / users) };
    })
    .sort((a, b) => b.share - a.share || b.reached - a.reached || a.name.localeCompare(b.name));
}

function conversionTable(rows) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "data conversions" },
      h("caption", { class: "visually-hidden" }, "Conversion to the goal by event"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Event"),
          h("th", { scope: "col", class: "num" }, "Conversion"),
          h("th", { scope: "col", class: "num" }, "Reached the goal"),
          h("th", { scope: "col", class: "num" }, "Users of the event"),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            { class: "conversion", dataset: { name: row.name } },
            h("td", {}, h("span", { class: "chip" }, row.name)),
            h(
              "td",
              { class: "num share", dataset: { value: row.share } },
              h("span", { class: "meter", style: { "--share": `${row.share * 100}%` } }),
              formatPercent(row.share),
            ),
            h("td", { class: "num reached", dataset: { value: row.reached } }, formatCount(row.reached)),
            h("td", { class: "num users", dataset: { value: row.users } }, formatCount(row.users)),
          ),
        ),
      ),
    ),
  );
}

function goalCard(goal, counter, eventUsers) {
  const card = h("article", { class: "panel goal", dataset: { goal } }, h("h2", {}, goal));
  if (!counter || counter.count === 0) {
    card.append(h("p", { class: "empty" }, "No user has reached this goal yet."));
    return card;
  }
  const sum = counter.value?.sum ?? 0;
  card.append(
    h(
      "p",
      { class: "goal-summary" },
      h(
        "strong",
        { class: "goal-users", dataset: { value: counter.count } },
        formatCount(counter.count),
      ),
      counter.count === 1 ? " user reached it" : " users reached it",
      sum ? ` · value sum ${formatNumber(sum)}` : "",
    ),
  );
  const converting = conversions(counter, eventUsers);
  card.append(
    h("h3", {}, "Conversion: of each event's users, the share who reached the goal"),
    converting.length
      ? conversionTable(converting)
      : h("p", { class: "empty" }, "Its users did no other event before reaching it."),
  );
  const combinations = [...(counter.event_counts ?? [])].sort(combinationOrder);
  const body = h("tbody");
  const table = h(
    "table",
    { class: "data combinations" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Events done before"),
        h("th", { scope: "col", class: "num" }, "Users"),
        h("th", { scope: "col", class: "num" }, "Share"),
      ),
    ),
    body,
  );
  const fill = (limit) => {
    clear(body);
    for (const combo of combinations.slice(0, limit)) {
      body.append(
        h(
          "tr",
          { class: "combination", dataset: { events: JSON.stringify(combo.events) } },
          h("td", {}, chips(combo.events)),
          h(
            "td",
            { class: "num count", dataset: { value: combo.count } },
            formatCount(combo.count),
          ),
          h("td", { class: "num" }, formatPercent(combo.count / counter.count)),
        ),
      );
    }
  };
  fill(TOP_COMBINATIONS);
  const details = h(
    "details",
    { class: "combinations-details" },
    h("summary", {}, `Combinations of events done before it (${formatCount(combinations.length)})`),
    h("p", { class: "hint" }, "The sets of other events its users had done when they first reached it, most common first."),
    h("div", { class: "table-wrap" }, table),
  );
  card.append(details);
  if (combinations.length > TOP_COMBINATIONS) {
    const more = h(
      "button",
      { type: "button", class: "secondary" },
      `Show all ${combinations.length} combinations`,
    );
    more.addEventListener("click", () => {
      fill(combinations.length);
      more.remove();
    });
    details.append(more);
  }
  return card;
}

function setupGoals() {
  $("#goal-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#goal-name");
    const status = $("#goal-form-status");
    const name = input.value.trim();
    const box = viewError("goals");
    if (!name) {
      showError(box, "Give the goal a name.");
      return;
    }
    try {
      await api("/v0/goals", {
        method: "POST",
        body: { goal_name: name, namespace: state.namespace },
      });
      hideError(box);
      input.value = "";
      flash(status, `Goal “${name}” created.`);
      await loadView("goals");
    } catch (error) {
      showError(box, error);
    }
  });
}

// ---------------------------------------------------------------- predictions

async function loadPredictions(isCurrent) {
  const [predictions, analytics] = await Promise.all([
    api("/v0/predictions", { query: ns() }),
    api("/v0/analytics", { query: ns() }),
  ]);
  if (!isCurrent()) return;
  state.predictions = {};
  for (const [goal, answer] of Object.entries(predictions.goals ?? {})) {
    if (answer && answer.events) state.predictions[goal] = answer.events;
  }
  state.counters = (analytics.counts ?? []).filter((c) => c.type === "named");
  const select = $("#prediction-goal");
  const previous = select.value;
  const goals = Object.keys(state.predictions).sort((a, b) => a.localeCompare(b));
  clear(select).append(...goals.map((goal) => h("option", { value: goal }, goal)));
  select.disabled = !goals.length;
  if (goals.includes(previous)) select.value = previous;
  renderRanking();
  renderWhatifChoices();
  if (state.whatif.size) runWhatif();
}

function renderRanking() {
  const goal = $("#prediction-goal").value;
  const events = state.predictions[goal];
  const body = clear($("#ranking-table tbody"));
  $("#ranking-table").hidden = !events;
  if (!events) {
    barChart($("#ranking-chart"), [], {
      emptyText:
        "No prediction yet: a goal gets one once users reached it after doing other events.",
    });
    return;
  }
  const ranked = Object.entries(events)
    .map(([name, answer]) => ({ name, bayes: answer.bayes ?? 0 }))
    .sort((a, b) => b.bayes - a.bayes || a.name.localeCompare(b.name));
  barChart(
    $("#ranking-chart"),
    ranked.slice(0, TOP_BARS).map((e) => ({ label: e.name, value: e.bayes })),
    { format: formatPercent, max: 1, caption: `P(${goal} | event)` },
  );
  ranked.forEach((entry, index) => {
    body.append(rankedRow(index, entry.name, entry.bayes, "bayes"));
  });
}

/** A table row of a ranking: the place (from 1), an event and its probability, shown in
 * a cell of class `valueClass`. */
function rankedRow(index, name, probability, valueClass) {
  return h(
    "tr",
    { dataset: { name } },
    h("td", { class: "num rank" }, String(index + 1)),
    h("td", { class: "name" }, name),
    h(
      "td",
      { class: `num ${valueClass}`, dataset: { value: probability } },
      formatPercent(probability),
    ),
  );
}

function renderWhatifChoices() {
  const root = clear($("#whatif-events"));
  const filter = $("#whatif-filter").value.trim().toLowerCase();
  const known = state.counters.map((c) => c.name);
  const names = [...new Set([...known, ...state.whatifExtra])].sort((a, b) => a.localeCompare(b));
  const matching = names.filter(
    (n) => !filter || n.toLowerCase().includes(filter) || state.whatif.has(n),
  );
  for (const name of matching.slice(0, MAX_CHIPS)) {
    const box = h("input", {
      type: "checkbox",
      value: name,
      checked: state.whatif.has(name),
      onchange: (event) => {
        if (event.target.checked) state.whatif.add(name);
        else state.whatif.delete(name);
        runWhatif();
      },
    });
    const extra = !known.includes(name);
    root.append(
      h(
        "label",
        {
          class: extra ? "choice extra" : "choice",
          title: extra ? "not among this namespace's events" : null,
        },
        box,
        name,
      ),
    );
  }
  if (matching.length > MAX_CHIPS) {
    root.append(
      h("p", { class: "hint" }, `${matching.length - MAX_CHIPS} more: filter to find them.`),
    );
  }
  if (!names.length) root.append(h("p", { class: "empty" }, "No event in this namespace yet."));
}

let whatifGeneration = 0;

async function runWhatif() {
  const generation = ++whatifGeneration;
  const result = $("#whatif-result");
  const box = $("#whatif-error");
  const events = [...state.whatif].sort((a, b) => a.localeCompare(b));
  if (!events.length) {
    hideError(box);
    clear(result).append(h("p", { class: "empty" }, "Pick at least one event."));
    return;
  }
  result.setAttribute("aria-busy", "true");
  try {
    const answer = await api("/v0/predictions", { query: { ...ns(), event: events } });
    if (generation !== whatifGeneration) return;
    hideError(box);
    renderWhatif(events, answer.goals ?? {});
  } catch (error) {
    if (generation !== whatifGeneration) return;
    clear(result);
    showError(box, error);
  } finally {
    if (generation === whatifGeneration) result.setAttribute("aria-busy", "false");
  }
}

function renderWhatif(events, goals) {
  const result = clear($("#whatif-result"));
  const names = Object.keys(goals).sort((a, b) => a.localeCompare(b));
  if (!names.length) {
    result.append(h("p", { class: "empty" }, "No goal to predict in this namespace."));
    return;
  }
  const cards = names.map((goal) => {
    const answer = goals[goal];
    const card = h(
      "div",
      { class: "card whatif-goal", dataset: { goal } },
      h("div", { class: "card-label" }, goal),
    );
    if (answer.note !== undefined) {
      card.append(h("p", { class: "note" }, answer.note));
      return card;
    }
    card.append(
      h(
        "div",
        { class: "card-value probability", dataset: { value: answer.probability } },
        formatPercent(answer.probability),
      ),
      h(
        "dl",
        { class: "ratios" },
        ["yes", "no", "likelihood"].map((key) => [
          h("dt", {}, key),
          h("dd", { class: key, dataset: { value: answer[key] } }, formatRatio(answer[key])),
        ]),
      ),
    );
    return card;
  });
  result.append(
    h("p", { class: "hint" }, "Probability of each goal given ", chips(events), ":"),
    h("div", { class: "cards whatif-cards", id: "whatif-cards" }, cards),
  );
}

function setupPredictions() {
  $("#prediction-goal").addEventListener("change", renderRanking);
  $("#whatif-filter").addEventListener("input", renderWhatifChoices);
  $("#whatif-add").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#whatif-extra");
    const name = input.value.trim();
    if (!name) return;
    if (!state.whatifExtra.includes(name) && !state.counters.some((c) => c.name === name)) {
      state.whatifExtra.push(name);
    }
    state.whatif.add(name);
    input.value = "";
    renderWhatifChoices();
    runWhatif();
  });
  $("#whatif-clear").addEventListener("click", () => {
    state.whatif.clear();
    state.whatifExtra = [];
    renderWhatifChoices();
    runWhatif();
  });
}

// ---------------------------------------------------------------- nudges

async function loadNudges(isCurrent) {
  const goals = await api("/v0/goals", { query: ns() });
  if (!isCurrent()) return;
  const select = $("#nudge-goal");
  const previous = select.value;
  const names = [...(goals.goals ?? [])].sort((a, b) => a.localeCompare(b));
  clear(select).append(...names.map((goal) => h("option", { value: goal }, goal)));
  select.disabled = !names.length;
  if (names.includes(previous)) select.value = previous;
  if (!names.length) {
    clear($("#nudge-result")).append(h("p", { class: "empty" }, "No goal in this namespace yet."));
  }
}

async function runNudges(event) {
  event.preventDefault();
  const goal = $("#nudge-goal").value;
  const user = $("#nudge-user").value.trim();
  const box = viewError("nudges");
  const result = $("#nudge-result");
  if (!goal || !user) {
    showError(box, !goal ? "Pick a goal (create one on the Goals page)." : "Give a user id.");
    return;
  }
  result.setAttribute("aria-busy", "true");
  try {
    const answer = await api("/v0/nudges", { query: { ...ns(), goal, user_id: user } });
    hideError(box);
    renderNudges(answer);
  } catch (error) {
    clear(result);
    showError(box, error);
  } finally {
    result.setAttribute("aria-busy", "false");
  }
}

function renderNudges(answer) {
  const result = clear($("#nudge-result"));
  const nudges = answer.nudges ?? [];
  const heading = h(
    "p",
    { class: "nudge-for" },
    "For user ",
    h("strong", {}, answer.user_id),
    " and goal ",
    h("strong", {}, answer.goal),
    ":",
  );
  if (!nudges.length) {
    result.append(
      heading,
      h(
        "p",
        { class: "empty" },
        "No nudge: the user has done every event that leads to this goal, or the goal has no prior events yet.",
      ),
    );
    return;
  }
  const chart = h("div", { class: "chart" });
  result.append(
    heading,
    chart,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "data", id: "nudges-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { class: "num rank" }, "#"),
            h("th", {}, "Suggest"),
            h("th", { class: "num" }, "P(goal | event)"),
          ),
        ),
        h(
          "tbody",
          {},
          nudges.map((nudge, index) =>
            rankedRow(index, nudge.event_name, nudge.prediction, "prediction"),
          ),
        ),
      ),
    ),
  );
  barChart(
    chart,
    nudges.slice(0, TOP_BARS).map((n) => ({ label: n.event_name, value: n.prediction })),
    { format: formatPercent, max: 1, caption: "Nudges" },
  );
}

// ---------------------------------------------------------------- feature flags

function flagPath(name) {
  return `/v0/featureSpecs/${encodeURIComponent(name)}`;
}

function conditionsOf(spec) {
  return (spec.user ?? []).map((c) =>
    Array.isArray(c) ? { property: c[0], comparator: c[1], value: c[2] } : { ...c },
  );
}

/** The spec as POST takes it: only the contract's fields. */
function specBody(spec) {
  const body = { name: spec.name, boolean: Boolean(spec.boolean), user: conditionsOf(spec) };
  if (spec.rollout_start && spec.rollout_end) {
    body.rollout_start = spec.rollout_start;
    body.rollout_end = spec.rollout_end;
  }
  for (const key of ["rollout_percentage", "stickiness", "group_id", "variants"]) {
    if (spec[key] !== undefined) body[key] = spec[key];
  }
  return body;
}

/** A spec in one line: default, rollouts, conditions, variants. */
function describeSpec(spec) {
  const parts = [spec.boolean ? "on" : "off"];
  if (spec.rollout_percentage !== undefined)
    parts.push(`${spec.rollout_percentage}% by ${spec.stickiness || "default"}`);
  if (spec.rollout_start) parts.push(`rollout ${spec.rollout_start} → ${spec.rollout_end}`);
  const conditions = conditionsOf(spec);
  if (conditions.length) parts.push(`${conditions.length} condition(s)`);
  if (spec.variants?.length)
    parts.push(`variants ${spec.variants.map((v) => `${v.name}:${v.weight}`).join(", ")}`);
  return parts.join("; ");
}

function describePercentage(spec) {
  if (spec.rollout_percentage === undefined) return null;
  const by = spec.stickiness ? ` by ${spec.stickiness}` : "";
  return h("span", { class: "badge percentage" }, `${spec.rollout_percentage}% of users${by}`);
}

function describeRollout(spec) {
  const percentage = describePercentage(spec);
  if (!spec.rollout_start || !spec.rollout_end)
    return percentage ?? h("span", { class: "muted" }, "none");
  const start = new Date(spec.rollout_start);
  const end = new Date(spec.rollout_end);
  const now = Date.now();
  let progress;
  if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime())) progress = "";
  else if (now < start) progress = "not started";
  else if (now >= end) progress = "complete";
  else progress = `${Math.floor(((now - start) / (end - start)) * 100)}% rolled out`;
  const when = (d) =>
    Number.isNaN(d.getTime())
      ? "?"
      : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  return h(
    "span",
    { title: `${spec.rollout_start} → ${spec.rollout_end}` },
    `${when(start)} → ${when(end)}`,
    progress ? h("span", { class: "badge" }, progress) : null,
    percentage,
  );
}

async function loadFlags(isCurrent) {
  const answer = await api("/v0/featureSpecs");
  if (!isCurrent()) return;
  state.flags = answer.featureSpecs ?? [];
  renderFlags();
}

function renderFlags() {
  const body = clear($("#flags-table tbody"));
  if (!state.flags.length) {
    body.append(
      h(
        "tr",
        {},
        h("td", { colspan: 5, class: "empty" }, "No feature flag yet: create one with the form."),
      ),
    );
  }
  for (const spec of state.flags) {
    const conditions = conditionsOf(spec);
    const toggle = h(
      "button",
      {
        type: "button",
        class: "switch",
        role: "switch",
        "aria-checked": String(Boolean(spec.boolean)),
        "aria-label": `Default of ${spec.name}`,
        title: "Toggle the default",
      },
      spec.boolean ? "On" : "Off",
    );
    toggle.addEventListener("click", () => toggleFlag(spec, toggle));
    const remove = h("button", { type: "button", class: "secondary danger" }, "Delete");
    remove.addEventListener("click", () => deleteFlag(spec, remove));
    remove.addEventListener("blur", () => {
      remove.textContent = "Delete";
      remove.dataset.armed = "";
    });
    body.append(
      h(
        "tr",
        { dataset: { flag: spec.name } },
        h("td", { class: "name" }, spec.name),
        h("td", { "data-label": "Default" }, toggle),
        h("td", { class: "rollout", "data-label": "Rollout" }, describeRollout(spec)),
        h(
          "td",
          { class: "conditions-cell", "data-label": "Conditions" },
          conditions.length
            ? conditions.map((c) =>
                h(
                  "div",
                  {},
                  h("code", {}, `${c.property} ${c.comparator} ${JSON.stringify(c.value)}`),
                ),
              )
            : h("span", { class: "muted" }, "none"),
          spec.variants?.length
            ? h(
                "div",
                { class: "variants" },
                `Variants: ${spec.variants.map((v) => `${v.name} (${v.weight})`).join(", ")}`,
              )
            : null,
        ),
        h(
          "td",
          {},
          h(
            "div",
            { class: "row-actions" },
            h(
              "button",
              { type: "button", class: "secondary", onclick: () => editFlag(spec) },
              "Edit",
            ),
            h(
              "button",
              { type: "button", class: "secondary", onclick: () => showFlagHistory(spec.name) },
              "History",
            ),
            remove,
          ),
        ),
      ),
    );
  }
}

async function toggleFlag(spec, button) {
  const box = viewError("flags");
  button.disabled = true;
  try {
    const saved = await api("/v0/featureSpecs", {
      method: "POST",
      body: { ...specBody(spec), boolean: !spec.boolean },
    });
    hideError(box);
    if (saved && saved.name) {
      state.flags = state.flags.map((f) => (f.name === saved.name ? saved : f));
      renderFlags();
    }
    await loadView("flags");
  } catch (error) {
    showError(box, error);
    button.disabled = false;
  }
}

async function deleteFlag(spec, button) {
  if (button.dataset.armed !== "yes") {
    button.dataset.armed = "yes";
    button.textContent = "Confirm delete";
    return;
  }
  const box = viewError("flags");
  button.disabled = true;
  try {
    await api(flagPath(spec.name), { method: "DELETE" });
    hideError(box);
    if (state.editing === spec.name) resetFlagForm();
    await loadView("flags");
  } catch (error) {
    showError(box, error);
    button.disabled = false;
  }
}

function toLocalInput(rfc3339) {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  // Seconds too: editing a flag must not move a rollout that starts or ends mid-minute.
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fromLocalInput(value) {
  const d = new Date(value); // "YYYY-MM-DDTHH:MM[:SS]" is local time
  if (Number.isNaN(d.getTime())) throw new Error(`Not a date and time: ${value}`);
  return d.toISOString().replace(/\.000Z$/, "Z");
}

function displayValue(value) {
  if (typeof value === "string") {
    try {
      JSON.parse(value);
      return JSON.stringify(value); // would read back as another type: keep the quotes
    } catch {
      return value;
    }
  }
  return JSON.stringify(value);
}

function parseValue(text, comparator) {
  const raw = text.trim();
  let value;
  try {
    value = JSON.parse(raw);
  } catch {
    value =
      comparator === "in"
        ? raw
            .split(",")
            .map((v) => v.trim())
            .filter((v) => v)
        : raw;
  }
  if (comparator === "in" && !Array.isArray(value)) {
    throw new Error(`For “in”, give a list: ["a", "b"] or a, b (got ${raw || "nothing"}).`);
  }
  return value;
}

function addConditionRow(condition = { property: "", comparator: "=", value: "" }) {
  const comparator = h(
    "select",
    { class: "condition-comparator", "aria-label": "Comparator" },
    h("option", { value: "=" }, "="),
    h("option", { value: "in" }, "in"),
  );
  comparator.value = condition.comparator === "in" ? "in" : "=";
  const row = h(
    "div",
    { class: "condition" },
    h("input", {
      class: "condition-property",
      "aria-label": "Property",
      placeholder: "property, e.g. country",
      value: condition.property ?? "",
    }),
    comparator,
    h("input", {
      class: "condition-value",
      "aria-label": "Value",
      placeholder: 'value, e.g. "fr"',
      value: condition.value === "" ? "" : displayValue(condition.value),
    }),
  );
  row.append(
    h(
      "button",
      {
        type: "button",
        class: "secondary icon",
        "aria-label": "Remove this condition",
        title: "Remove",
        onclick: () => row.remove(),
      },
      "✕",
    ),
  );
  $("#flag-conditions").append(row);
  return row;
}

function addVariantRow(variant = { name: "", weight: 1, payload: "" }) {
  const row = h(
    "div",
    { class: "condition variant" },
    h("input", {
      class: "variant-name",
      "aria-label": "Variant name",
      placeholder: "name, e.g. blue",
      value: variant.name ?? "",
    }),
    h("input", {
      class: "variant-weight",
      "aria-label": "Variant weight",
      type: "number",
      min: "0",
      max: "1000",
      step: "1",
      value: String(variant.weight ?? 1),
    }),
    h("input", {
      class: "variant-payload",
      "aria-label": "Variant payload",
      placeholder: "payload (optional)",
      value: variant.payload ?? "",
    }),
  );
  row.append(
    h(
      "button",
      {
        type: "button",
        class: "secondary icon",
        "aria-label": "Remove this variant",
        title: "Remove",
        onclick: () => row.remove(),
      },
      "✕",
    ),
  );
  $("#flag-variants").append(row);
  return row;
}

function resetFlagForm() {
  state.editing = null;
  $("#flag-form-title").textContent = "New flag";
  const name = $("#flag-name");
  name.value = "";
  name.readOnly = false;
  $("#flag-boolean").checked = false;
  $("#flag-start").value = "";
  $("#flag-end").value = "";
  $("#flag-percentage").value = "";
  $("#flag-stickiness").value = "";
  $("#flag-group-id").value = "";
  clear($("#flag-variants"));
  clear($("#flag-conditions"));
  hideError($("#flag-form-error"));
  $("#flag-form-status").textContent = "";
}

function editFlag(spec) {
  resetFlagForm();
  state.editing = spec.name;
  $("#flag-form-title").textContent = `Edit flag “${spec.name}”`;
  const name = $("#flag-name");
  name.value = spec.name;
  name.readOnly = true;
  $("#flag-boolean").checked = Boolean(spec.boolean);
  $("#flag-start").value = toLocalInput(spec.rollout_start);
  $("#flag-end").value = toLocalInput(spec.rollout_end);
  $("#flag-percentage").value =
    spec.rollout_percentage === undefined ? "" : String(spec.rollout_percentage);
  $("#flag-stickiness").value = spec.stickiness ?? "";
  $("#flag-group-id").value = spec.group_id ?? "";
  (spec.variants ?? []).forEach((v) => addVariantRow(v));
  conditionsOf(spec).forEach((c) => addConditionRow(c));
  $("#flag-form").scrollIntoView({ behavior: "smooth", block: "start" });
  $("#flag-boolean").focus({ preventScroll: true });
}

function specFromForm() {
  const name = $("#flag-name").value.trim();
  if (!name) throw new Error("Give the flag a name.");
  const spec = { name, boolean: $("#flag-boolean").checked, user: [] };
  const start = $("#flag-start").value;
  const end = $("#flag-end").value;
  if (Boolean(start) !== Boolean(end))
    throw new Error("A rollout needs both a start and an end (or neither).");
  if (start) {
    spec.rollout_start = fromLocalInput(start);
    spec.rollout_end = fromLocalInput(end);
    if (new Date(spec.rollout_end) <= new Date(spec.rollout_start))
      throw new Error("The rollout must end after it starts.");
  }
  for (const row of document.querySelectorAll("#flag-conditions .condition")) {
    const property = $(".condition-property", row).value.trim();
    const comparator = $(".condition-comparator", row).value;
    const valueText = $(".condition-value", row).value;
    if (!property && !valueText.trim()) continue; // an empty row
    if (!property) throw new Error("Each condition needs a property.");
    spec.user.push({ property, comparator, value: parseValue(valueText, comparator) });
  }
  const percentage = $("#flag-percentage").value.trim();
  if (percentage) {
    const value = Number(percentage);
    if (!Number.isInteger(value) || value < 0 || value > 100)
      throw new Error(`The percentage must be a whole number from 0 to 100 (got ${percentage}).`);
    spec.rollout_percentage = value;
  }
  const stickiness = $("#flag-stickiness").value.trim();
  const groupId = $("#flag-group-id").value.trim();
  if (stickiness) spec.stickiness = stickiness;
  if (groupId) spec.group_id = groupId;
  const variants = [];
  for (const row of document.querySelectorAll("#flag-variants .variant")) {
    const name = $(".variant-name", row).value.trim();
    const weightText = $(".variant-weight", row).value.trim();
    const payload = $(".variant-payload", row).value;
    if (!name && !payload) continue; // an empty row
    if (!name) throw new Error("Each variant needs a name.");
    const weight = Number(weightText);
    if (!Number.isInteger(weight) || weight < 0 || weight > 1000)
      throw new Error(`The weight of ${name} must be a whole number from 0 to 1000.`);
    variants.push({ name, weight, payload });
  }
  if (variants.length) spec.variants = variants;
  return spec;
}

async function showFlagHistory(name) {
  const panel = $("#flag-history");
  const box = $("#flag-history-error");
  const body = clear($("#flag-history-table tbody"));
  $("#flag-history-title").textContent = `History of “${name}”`;
  panel.hidden = false;
  panel.setAttribute("aria-busy", "true");
  try {
    const answer = await api(`${flagPath(name)}/history`);
    hideError(box);
    const changes = answer.changes ?? [];
    if (!changes.length) {
      body.append(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No recorded change.")));
    }
    for (const change of changes) {
      const kind = !change.new_spec ? "deleted" : !change.old_spec ? "created" : "changed";
      const when = change.time ? new Date(change.time) : null;
      body.append(
        h(
          "tr",
          { dataset: { change: kind } },
          h(
            "td",
            { title: change.time ?? "" },
            when ? when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }) : "unknown",
          ),
          h("td", {}, h("code", {}, change.token_id || "unknown")),
          h("td", {}, kind),
          h("td", {}, describeSpec(change.new_spec ?? change.old_spec)),
        ),
      );
    }
  } catch (error) {
    showError(box, error);
  } finally {
    panel.setAttribute("aria-busy", "false");
  }
  panel.scrollIntoView({ behavior: "smooth", block: "start" });
}

async function saveFlag(event) {
  event.preventDefault();
  const box = $("#flag-form-error");
  $("#flag-form-status").textContent = "";
  let spec;
  try {
    spec = specFromForm();
  } catch (error) {
    showError(box, error);
    return;
  }
  const button = $("#flag-save");
  button.disabled = true;
  try {
    const saved = await api("/v0/featureSpecs", { method: "POST", body: spec });
    hideError(box);
    resetFlagForm();
    flash($("#flag-form-status"), `Saved “${(saved && saved.name) || spec.name}”.`);
    await loadView("flags");
  } catch (error) {
    showError(box, error);
  } finally {
    button.disabled = false;
  }
}

function parseObject(text, what) {
  let value;
  try {
    value = JSON.parse(text.trim() || "{}");
  } catch (error) {
    throw new Error(`The ${what} is not valid JSON: ${error.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new Error(`The ${what} must be a JSON object, like {"user_id": "u1"}.`);
  }
  return value;
}

async function tryFlags(event) {
  event.preventDefault();
  const box = $("#try-error");
  const result = clear($("#try-result"));
  try {
    const user = parseObject($("#try-user").value, "user");
    const context = parseObject($("#try-context").value, "context");
    const answer = await api("/v0/features", {
      query: { user_obj: base64Json(user), context_obj: base64Json(context) },
    });
    hideError(box);
    const features = Object.entries(answer.features ?? {}).sort(([a], [b]) => a.localeCompare(b));
    if (!features.length) {
      result.append(h("p", { class: "empty" }, "No flag defined."));
      return;
    }
    result.append(
      h(
        "ul",
        { class: "features" },
        features.map(([name, on]) =>
          h(
            "li",
            { dataset: { flag: name, value: String(on) } },
            h("span", { class: on ? "state on" : "state off" }, on ? "on" : "off"),
            " ",
            name,
            answer.variants?.[name]
              ? h("span", { class: "badge variant" }, `variant ${answer.variants[name]}`)
              : null,
          ),
        ),
      ),
    );
  } catch (error) {
    showError(box, error);
  }
}

function setupFlags() {
  $("#flag-form").addEventListener("submit", saveFlag);
  $("#flag-add-condition").addEventListener("click", () =>
    $(".condition-property", addConditionRow()).focus(),
  );
  $("#flag-add-variant").addEventListener("click", () =>
    $(".variant-name", addVariantRow()).focus(),
  );
  $("#flag-history-close").addEventListener("click", () => {
    $("#flag-history").hidden = true;
  });
  $("#flag-cancel").addEventListener("click", resetFlagForm);
  $("#flag-new").addEventListener("click", () => {
    resetFlagForm();
    $("#flag-name").focus();
  });
  $("#try-form").addEventListener("submit", tryFlags);
}

// ---------------------------------------------------------------- start

const LOADERS = {
  analytics: loadAnalytics,
  live: loadLive,
  goals: loadGoals,
  predictions: loadPredictions,
  nudges: loadNudges,
  flags: loadFlags,
};

addViewErrors();
setupToken();
setupNavigation();
setupLive();
setupGoals();
setupPredictions();
setupFlags();
$("#counter-filter").addEventListener("input", renderCounters);
$("#nudge-form").addEventListener("submit", runNudges);
reloadAll();
