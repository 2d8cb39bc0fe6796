// The AAMAS dashboard: the president's view and a governor's view of the mesh, read
// from this node's API with a bearer token and kept live by its event stream
// (GET /api/v1/events as server-sent events, read with fetch so the token travels in
// the Authorization header). Nothing is loaded from anywhere but this node.
"use strict";

const PHASES = ["initiation", "feasibility", "requirements", "design", "development",
  "testing", "deployment", "launch"];
const MAX_EVENTS_SHOWN = 300;
const ui = {
  token: null, view: "president", state: null, data: {}, events: [],
  completions: [], refreshing: false, again: false,
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
};
const short = (peer) => (peer ? "…" + peer.slice(-8) : "—");
const peer = (id) => el("span", { class: "peer", title: id || "" }, short(id));
const role = (name) => el("span", { class: "role " + name }, name);
const fill = (id, ...children) => { const node = $(id); node.replaceChildren(...children.flat(Infinity)); return node; };
const card = (label, value) => el("div", { class: "card" }, el("b", {}, value ?? "—"), el("span", {}, label));
const time = (ms) => new Date(ms).toLocaleTimeString();

class Unauthorised extends Error {}

async function api(path) {
  const response = await fetch("/api/v1" + path, { headers: { Authorization: "Bearer " + ui.token } });
  if (response.status === 401 || response.status === 403) throw new Unauthorised(await problem(response));
  if (!response.ok) throw new Error(path + ": " + await problem(response));
  return response.json();
}

async function problem(response) {
  try { return (await response.json()).detail || response.statusText; } catch { return response.statusText; }
}

function signIn(message) {
  sessionStorage.removeItem("aamas-token");
  ui.token = null;
  $("login").hidden = false;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("login-error").textContent = message || "";
}

async function refresh() {
  if (ui.refreshing) { ui.again = true; return; }
  ui.refreshing = true;
  try {
    const [status, hierarchy, projects, resources, alerts, metrics] = await Promise.all([
      api("/system/status"), api("/hierarchy"), api("/projects?limit=200"),
      api("/resources"), api("/alerts"), api("/system/metrics"),
    ]);
    const artifacts = await Promise.all(projects.slice(0, 50).map(
      (project) => api("/projects/" + encodeURIComponent(project.id) + "/artifacts").catch(() => [])));
    const tasks = await Promise.all(projects.slice(0, 50).map(
      (project) => api("/projects/" + encodeURIComponent(project.id) + "/tasks").catch(() => [])));
    ui.data = { status, hierarchy, projects, resources, alerts, metrics, artifacts, tasks };
    $("login").hidden = true;
    render();
  } catch (error) {
    if (error instanceof Unauthorised) signIn(error.message);
    else console.warn("refresh failed", error);
  } finally {
    ui.refreshing = false;
    if (ui.again) { ui.again = false; setTimeout(refresh, 300); }
  }
}

function render() {
  const { hierarchy } = ui.data;
  const select = $("state-select");
  const names = hierarchy.states.map((state) => state.name);
  if (!ui.state || !names.includes(ui.state)) {
    ui.state = (hierarchy.states.find((state) => state.governor) || hierarchy.states[0] || {}).name;
  }
  select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  select.value = ui.state || "";
  select.hidden = ui.view !== "governor";
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === ui.view);
  $("president").hidden = ui.view !== "president";
  $("governor").hidden = ui.view !== "governor";
  if (ui.view === "president") renderPresident(); else renderGovernor();
}

function renderPresident() {
  const { status, hierarchy, projects, resources, alerts, metrics, artifacts } = ui.data;
  const rate = metrics.phase_transitions.success_rate;
  fill("overview",
    card("president", short(hierarchy.president)), card("federal term", status.term),
    card("members", metrics.members), card("task slots", metrics.task_slots),
    card("open tasks", metrics.open_tasks), card("projects open", metrics.projects.open),
    card("completed", metrics.projects.completed), card("failed", metrics.projects.failed),
    card("phase transitions passed", rate === null ? "—" : (rate * 100).toFixed(0) + "%"),
    card("project time p50", metrics.completed_seconds ? metrics.completed_seconds.p50.toFixed(1) + " s" : "—"),
    card("group key epoch", status.group_key.epoch));
  fill("hierarchy", tree(hierarchy));
  fill("projects", projectTable(projects, artifacts));
  fill("resources", resourceTable(resources));
  const open = alerts.filter((alert) => alert.acknowledged_ms === null || alert.acknowledged_ms === undefined);
  const escalations = ui.events.filter((event) => event.kind === "error_escalation").slice(-20);
  fill("alerts",
    open.length + escalations.length === 0 ? [el("li", {}, "none")] : [],
    open.map((alert) => el("li", { class: "alert" }, el("b", {}, "alert " + alert.id + " "),
      alert.metric + " = " + alert.value + " (threshold " + alert.threshold + ") on ", peer(alert.subject),
      ": " + alert.message)),
    escalations.map((event) => {
      const escalation = event.event.ErrorEscalation;
      return el("li", { class: "escalation" }, el("b", {}, "escalation "),
        (escalation.project || "-") + " / " + (escalation.task || "-") + " (level " + escalation.level + "): " + escalation.error);
    }));
  fill("events", ui.events.slice(-MAX_EVENTS_SHOWN).reverse().map(eventLine));
}

function tree(hierarchy) {
  const worker = (id, state) => el("li", {}, role(roleOf(id, state)), peer(id));
  return el("div", { class: "tree" }, el("ul", {},
    el("li", {}, role("president"), peer(hierarchy.president),
      el("ul", {}, hierarchy.states.map((state) => el("li", { class: "state-node" },
        role("state"), el("b", {}, state.name + " "), "governor ", peer(state.governor),
        el("ul", {}, state.cities.map((city) => el("li", {}, role("mayor"), city.name + " ", peer(city.mayor),
          city.queue === null ? "" : " queue " + city.queue)),
          state.workers.map((id) => worker(id, state)))))))));
}

function roleOf(id, state) {
  if (id === ui.data.hierarchy.president) return "president";
  if (id === state.governor) return "governor";
  if (state.mayors.includes(id)) return "mayor";
  return "worker";
}

function projectTable(projects, artifacts) {
  return [el("tr", {}, ["project", "status", "phase", "phases", "tasks", "artefacts"].map((h) => el("th", {}, h))),
    projects.map((project, i) => {
      const done = project.phases.reduce((sum, phase) => sum + phase.tasks_done, 0);
      const total = project.phases.reduce((sum, phase) => sum + phase.tasks_total, 0);
      return el("tr", { class: "project", "data-id": project.id },
        el("td", {}, project.name + " ", el("span", { class: "peer" }, project.id)),
        el("td", { class: "status-" + project.status }, project.status),
        el("td", {}, project.phase),
        el("td", {}, project.phases.map((phase) => el("span",
          { class: "phase " + phase.status, title: phase.name + ": " + phase.status }))),
        el("td", {}, done + "/" + total),
        el("td", {}, artifacts[i] ? artifacts[i].length : "—"));
    })];
}

const RESOURCES = [["cpu_ms", "CPU ms"], ["tokens", "tokens"], ["api_calls", "API calls"],
  ["money_micros", "money µ"], ["memory_kib_s", "memory KiB·s"], ["storage_bytes", "storage B"]];

function resourceTable(resources) {
  const rows = [el("tr", {}, ["state", "resource", "used", "limit", ""].map((h) => el("th", {}, h)))];
  for (const state of resources) {
    const used = state.used || {};
    for (const [key, label] of RESOURCES) {
      const limit = (state.limits || []).find((l) => l.resource === key || l.resource === label);
      const amount = limit ? limit.amount ?? limit.limit : null;
      if (!used[key] && !limit) continue;
      const share = amount ? Math.min(1, (used[key] || 0) / amount) : 0;
      rows.push(el("tr", { class: "resource" }, el("td", {}, state.state), el("td", {}, label),
        el("td", {}, used[key] || 0), el("td", {}, amount ?? "none"),
        el("td", {}, el("div", { class: "bar" + (share >= 1 ? " over" : "") }, gauge(share)))));
    }
  }
  if (rows.length === 1) rows.push(el("tr", {}, el("td", { colspan: "5" }, "nothing used yet")));
  return rows;
}

// The filled part of a bar (set through the CSSOM: the page's policy allows no inline style).
function gauge(share) {
  const part = el("i");
  part.style.width = (share * 100).toFixed(0) + "%";
  return part;
}

function renderGovernor() {
  const { hierarchy, resources, projects, tasks } = ui.data;
  const state = hierarchy.states.find((s) => s.name === ui.state);
  if (!state) { fill("state-overview", card("state", "none")); return; }
  const inState = projects.map((project, i) => [project, (tasks[i] || []).filter((t) => t.state === state.name)])
    .filter(([, mine]) => mine.length > 0);
  const running = inState.reduce((sum, [, mine]) => sum + mine.filter((t) => !["succeeded", "failed", "escalated"].includes(t.status)).length, 0);
  fill("state-overview", card("state", state.name), card("governor", short(state.governor)),
    card("term", state.term), card("voters", state.voters.length), card("cities", state.cities.length),
    card("workers", state.workers.length), card("projects", inState.length), card("tasks open", running));
  fill("state-tree", tree({ president: hierarchy.president, states: [state] }));
  fill("state-projects", [el("tr", {}, ["project", "status", "tasks here", "done"].map((h) => el("th", {}, h))),
    inState.map(([project, mine]) => el("tr", { class: "project" },
      el("td", {}, project.name), el("td", { class: "status-" + project.status }, project.status),
      el("td", {}, mine.length), el("td", {}, mine.filter((t) => t.status === "succeeded").length)))]);
  fill("state-resources", resourceTable(resources.filter((r) => r.state === state.name)));
  fill("trend", sparkline(ui.completions.filter((c) => c.state === state.name).map((c) => c.at)));
  fill("state-events", ui.events.filter((event) => event.state === state.name ||
    (event.role && event.role.state === state.name)).slice(-MAX_EVENTS_SHOWN).reverse().map(eventLine));
}

function sparkline(times) {
  const minutes = 30, now = Date.now(), counts = new Array(minutes).fill(0);
  for (const at of times) {
    const age = Math.floor((now - at) / 60000);
    if (age >= 0 && age < minutes) counts[minutes - 1 - age] += 1;
  }
  const top = Math.max(1, ...counts), width = 300, height = 60, step = width / (minutes - 1);
  const points = counts.map((count, i) => (i * step).toFixed(1) + "," + (height - count / top * (height - 4) - 2).toFixed(1)).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points); line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2f6fb5"); line.setAttribute("stroke-width", "2");
  svg.append(line);
  return [svg, el("div", {}, counts.reduce((a, b) => a + b, 0) + " in the last " + minutes + " minutes, at most " + top + " a minute")];
}

function eventLine(event) {
  let what = "";
  const body = event.event || {};
  if (body.PhaseTransition) what = body.PhaseTransition.project + " " + (body.PhaseTransition.from || "intake") + " → done";
  else if (body.TaskCompletion) what = body.TaskCompletion.project + " / " + body.TaskCompletion.task + " attempt " + body.TaskCompletion.attempt + (body.TaskCompletion.outcome.Succeeded ? " succeeded" : " failed");
  else if (body.ErrorEscalation) what = (body.ErrorEscalation.project || "") + " " + body.ErrorEscalation.error;
  else if (body.PerformanceAlert) what = body.PerformanceAlert.metric;
  else if (event.kind === "membership") what = short(event.member) + (event.joined ? " joined" : " left");
  else if (event.kind === "leader_change") what = event.role.role + (event.role.state ? " of " + event.role.state : "") + " → " + short(event.holder);
  else if (event.kind === "role_change") what = (event.gained ? "gained " : "lost ") + event.role.role + (event.role.state ? " of " + event.role.state : "");
  return el("li", { class: "event " + event.kind }, time(event.at_ms) + " " + event.kind + " " + what);
}

function onEvent(event) {
  ui.events.push(event);
  if (ui.events.length > 4 * MAX_EVENTS_SHOWN) ui.events.splice(0, ui.events.length - MAX_EVENTS_SHOWN);
  if (event.kind === "task_completion") ui.completions.push({ state: event.state, at: event.at_ms });
  if (ui.completions.length > 20000) ui.completions.splice(0, 10000);
  clearTimeout(ui.timer);
  ui.timer = setTimeout(refresh, 250);
}

// Reads the event stream for as long as the page is open, resuming from the last index
// after a drop (the node keeps the last few thousand events).
async function stream() {
  let next = 0;
  for (;;) {
    try {
      const response = await fetch("/api/v1/events?from=" + next, {
        headers: { Authorization: "Bearer " + ui.token, Accept: "text/event-stream" } });
      if (response.status === 401 || response.status === 403) { signIn(await problem(response)); return; }
      if (!response.ok) throw new Error(await problem(response));
      setLive(true);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue;
          const parsed = JSON.parse(data);
          if (typeof parsed.index === "number") { next = parsed.index + 1; onEvent(parsed); }
          else if (kind === "dropped") console.warn("the node dropped this stream", parsed);
        }
      }
    } catch (error) {
      console.warn("event stream", error);
    }
    setLive(false);
    if (!ui.token) return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function setLive(on) {
  const live = $("live");
  live.className = "live " + (on ? "on" : "off");
  live.textContent = on ? "live" : "offline";
}

function start(token) {
  ui.token = token;
  sessionStorage.setItem("aamas-token", token);
  refresh().then(() => { if (ui.token) stream(); });
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => { ui.view = tab.dataset.view; if (ui.data.hierarchy) render(); });
}
$("state-select").addEventListener("change", (e) => { ui.state = e.target.value; render(); });
$("login-form").addEventListener("submit", (e) => { e.preventDefault(); start($("token-input").value.trim()); });

// A token in the fragment (#token=...) never reaches a server; it is moved to this tab's
// session storage and taken out of the address bar.
function takeFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!token) return false;
  sessionStorage.setItem("aamas-token", token);
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}
window.addEventListener("hashchange", () => { if (takeFragment() && !ui.token) start(sessionStorage.getItem("aamas-token")); });
takeFragment();
if (new URLSearchParams(location.search).get("view") === "governor") ui.view = "governor";
const saved = sessionStorage.getItem("aamas-token");
if (saved) start(saved); else signIn("");
setInterval(() => { if (ui.token) refresh(); }, 10000);
