// The console's pages. Every page is this script reading /api/v1/... (the control
// API's routes, as the signed-in person) and building the DOM with textContent, never
// innerHTML, for anything that came from the store.
"use strict";

const state = { me: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const init = { credentials: "same-origin", headers: {} };
  if (options && options.body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.headers["x-sluice-csrf"] = state.me.csrf;
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch("/api" + path, init);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  if (response.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

function toast(message) {
  const node = document.getElementById("toast");
  node.textContent = message;
  setTimeout(() => { if (node.textContent === message) node.textContent = ""; }, 6000);
}

function when(text) {
  if (!text) return "";
  const date = new Date(text);
  return isNaN(date) ? text : date.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

function decisionCell(decision) {
  if (!decision) return "";
  return el("span", {}, el("span", { class: decision.action }, decision.action), " ",
    el("code", {}, decision.rule));
}

function identityText(identity) {
  if (!identity) return "";
  const claims = identity.claims || {};
  const parts = [];
  if (claims.repository) parts.push(claims.repository);
  const actor = claims.actor || claims.user_login || claims.build_creator;
  if (actor) parts.push("by " + actor);
  return parts.length ? parts.join(" ") : identity.subject;
}

// `root (uid 0)`, or `alice@example.com (via https://login.example.com, groups sre)`.
function approverText(name, uid, identity) {
  if (uid !== null && uid !== undefined) return `${name || "?"} (uid ${uid})`;
  if (identity) return `${name || identity.subject} (via ${identity.issuer}${identity.groups && identity.groups.length ? ", groups " + identity.groups.join(" ") : ""})`;
  return name || "?";
}

function isApprover() { return state.me && state.me.user.role === "approver"; }

function main() { return document.getElementById("main"); }

function show(title, ...content) {
  document.title = title + " · sluice console";
  const node = main();
  node.replaceChildren(el("h1", {}, title), ...content);
}

// ---- Sessions ----------------------------------------------------------------------

const FILTERS = [
  ["agent", "Agent"], ["resource", "Resource"], ["protocol", "Protocol"],
  ["decision", "Decision"], ["since", "Since (UTC)"], ["until", "Until (UTC)"],
  ["repository", "Repository"], ["actor", "Actor"],
];

async function sessionsPage() {
  const params = new URLSearchParams(location.search);
  const form = el("form", { class: "filters", method: "get", action: "/sessions", role: "search" },
    FILTERS.map(([name, label]) => {
      let input;
      if (name === "decision") {
        input = el("select", { name, id: "f-" + name },
          ["", "allow", "deny", "review"].map((v) => el("option", { value: v, selected: params.get(name) === v }, v || "any")));
      } else if (name === "protocol") {
        input = el("select", { name, id: "f-" + name },
          ["", "postgres", "mysql", "http", "kubernetes", "ssh", "dns", "tcp"].map((v) =>
            el("option", { value: v, selected: params.get(name) === v }, v || "any")));
      } else {
        input = el("input", { name, id: "f-" + name, value: params.get(name) || "",
          placeholder: name === "since" || name === "until" ? "2026-12-06T04:00:00Z" : "" });
      }
      return el("label", { for: "f-" + name }, label, input);
    }),
    el("button", { type: "submit" }, "Filter"),
    el("a", { href: "/sessions" }, "Clear"));
  // Empty fields stay out of the URL, so a filtered page's link says what it filters.
  form.addEventListener("submit", () => {
    for (const field of form.querySelectorAll("input, select")) if (!field.value) field.disabled = true;
  });
  const query = new URLSearchParams();
  for (const [name] of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  query.set("limit", params.get("limit") || "200");
  const table = el("table", { id: "sessions" });
  show("Sessions", form, table);
  let sessions;
  try { sessions = await api("/v1/sessions?" + query.toString()); }
  catch (error) { table.replaceWith(el("p", { class: "error", role: "alert" }, error.message)); return; }
  table.append(el("thead", {}, el("tr", {}, ["Session", "Started", "Agent", "Resource", "Destination", "Decision", "State", "Workload"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, sessions.map((s) => el("tr", { "data-session": s.id },
      el("td", {}, el("a", { href: "/sessions/" + s.id }, "#" + s.id)),
      el("td", {}, when(s.started_at)),
      el("td", {}, s.agent),
      el("td", {}, s.resource || el("span", { class: "muted" }, "—")),
      el("td", {}, el("code", {}, s.destination)),
      el("td", {}, decisionCell(s.decision)),
      el("td", {}, s.state, s.close_reason ? el("span", { class: "muted" }, " (" + s.close_reason + ")") : ""),
      el("td", {}, identityText(s.identity))))));
  if (!sessions.length) table.after(el("p", { class: "muted" }, "No sessions match."));
}

async function sessionPage(id) {
  show("Session #" + id, el("p", {}, "Loading…"));
  let session, statements, recordings;
  try {
    [session, statements, recordings] = await Promise.all([
      api("/v1/sessions/" + id), api("/v1/sessions/" + id + "/statements"),
      api("/v1/sessions/" + id + "/recordings")]);
  } catch (error) { show("Session #" + id, el("p", { class: "error", role: "alert" }, error.message)); return; }
  const facts = [
    ["Agent", session.agent], ["Process", `${session.comm || ""} pid ${session.pid} uid ${session.uid}`],
    ["Executable", session.exe || "—"], ["Destination", session.destination], ["Resource", session.resource || "—"],
    ["Decision", decisionCell(session.decision)], ["Reason", session.decision.reason],
    ["Started", when(session.started_at)], ["Ended", when(session.ended_at) || "open"],
    ["Bytes", `${session.bytes_up} up, ${session.bytes_down} down`], ["Closed because", session.close_reason || "—"],
  ];
  if (session.identity) facts.push(["Workload", identityText(session.identity) + " (" + session.identity.issuer + ", " + session.identity.subject + ")"]);
  if (session.parent_session) facts.push(["Inside", el("a", { href: "/sessions/" + session.parent_session }, "#" + session.parent_session)]);
  const timeline = el("table", { id: "timeline" },
    el("thead", {}, el("tr", {}, ["#", "Time", "Operation", "Decision", "Duration", "Result", "Masked", "Approval"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, statements.map((s) => {
      const masked = Object.entries(s.masked || {}).map(([column, count]) => `${column}: ${count}`);
      if (s.nulled) masked.push(`nulled: ${s.nulled}`);
      const approval = s.approval;
      return el("tr", { id: "op-" + s.seq },
        el("td", {}, s.seq),
        el("td", {}, when(s.started_at)),
        el("td", {}, el("span", { class: "muted" }, (s.protocol || "") + " " + s.operation + " "), el("code", {}, s.sql)),
        el("td", {}, decisionCell(s.decision)),
        el("td", {}, s.duration_us == null ? "" : (s.duration_us / 1000).toFixed(1) + " ms"),
        el("td", {}, s.error ? el("span", { class: "deny" }, s.error) : (s.tag || (s.rows == null ? "" : s.rows + " rows"))),
        el("td", {}, masked.join(", ")),
        el("td", {}, approval ? el("span", {},
          el("a", { href: "/approvals/" + approval.id }, "#" + approval.id), " ",
          el("span", { class: approval.outcome }, approval.outcome),
          approval.approver_name || approval.approver_uid != null ? " by " + approverText(approval.approver_name, approval.approver_uid, approval.approver_identity) : "",
          approval.reason ? ": " + approval.reason : "") : ""));
    })));
  const players = el("div", { id: "recordings" });
  show("Session #" + id, el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h2", {}, "Timeline"), statements.length ? timeline : el("p", { class: "muted" }, "No operations recorded."),
    recordings.length ? el("h2", {}, "Terminal recordings") : "", players);
  for (const recording of recordings) {
    try { window.CastPlayer(players, recording.cast, "Recording of operation " + recording.seq); }
    catch (error) { players.append(el("p", { class: "error" }, "Recording " + recording.seq + ": " + error.message)); }
  }
  if (location.hash) { const target = document.querySelector(location.hash); if (target) target.scrollIntoView(); }
}

// ---- Approvals ---------------------------------------------------------------------

function heldCard(held) {
  const reason = el("textarea", { id: "reason-" + held.id, "aria-label": "Reason for approval " + held.id, required: true, maxlength: "1000" });
  const error = el("p", { class: "error", role: "alert" });
  async function decide(verb) {
    if (!reason.value.trim()) { error.textContent = "A reason is required."; reason.focus(); return; }
    try {
      const answer = await api(`/v1/approvals/${held.id}/${verb}`, { body: { reason: reason.value } });
      const text = `Approval #${answer.id} ${answer.outcome} by ${approverText(answer.approver_name, answer.approver_uid, answer.approver_identity)}: ${answer.reason}`;
      toast(text);
    } catch (e) { error.textContent = e.message; }
  }
  return el("article", { class: "card", id: "approval-" + held.id, "data-approval": held.id },
    el("h2", {}, el("a", { href: "/approvals/" + held.id }, "Approval #" + held.id), " · ", held.agent, " on ", held.resource),
    el("pre", {}, held.sql),
    el("dl", { class: "facts" },
      el("dt", {}, "Rule"), el("dd", {}, el("code", {}, held.rule), " — ", held.reason),
      el("dt", {}, "Session"), el("dd", {}, el("a", { href: `/sessions/${held.session_id}#op-${held.statement_seq}` }, `#${held.session_id}, operation ${held.statement_seq}`)),
      el("dt", {}, "Process"), el("dd", {}, `pid ${held.pid} uid ${held.uid}`),
      held.identity ? [el("dt", {}, "Workload"), el("dd", {}, identityText(held.identity))] : [],
      el("dt", {}, "Waiting since"), el("dd", {}, when(held.waiting_since)),
      el("dt", {}, "Denied at"), el("dd", {}, when(held.expires_at))),
    isApprover() ? [el("label", { for: "reason-" + held.id }, "Reason"), reason,
      el("div", { class: "actions" },
        el("button", { type: "button", class: "approve", onclick: () => decide("approve") }, "Approve"),
        el("button", { type: "button", class: "deny", onclick: () => decide("deny") }, "Deny")), error]
      : el("p", { class: "muted" }, "You are signed in as a viewer: only approvers decide."));
}

function approvalsPage(onlyId) {
  const list = el("div", { id: "held", "aria-live": "polite" }, el("p", {}, "Connecting…"));
  const decided = el("ul", { id: "decided" });
  show(onlyId ? "Approval #" + onlyId : "Approvals", list, el("h2", {}, "Recently decided"), decided);
  let lastDecided = [];
  const decisionText = (d) => `Approval #${d.held.id} ${d.outcome}` +
    (d.approver ? " by " + approverText(d.approver.name, d.approver.uid, d.approver.identity) : "") + `: ${d.reason}`;
  const source = new EventSource("/api/approvals/stream");
  source.addEventListener("decided", (event) => {
    lastDecided = JSON.parse(event.data);
    decided.replaceChildren(...lastDecided.map((d) => el("li", { "data-approval": d.held.id },
      el("span", { class: d.outcome }, decisionText(d)),
      el("span", { class: "muted" }, ` — ${d.held.agent} on ${d.held.resource}: `), el("code", {}, d.held.sql),
      el("span", { class: "muted" }, " (" + when(d.decided_at) + ", "),
      el("a", { href: `/sessions/${d.held.session_id}#op-${d.held.statement_seq}` }, "session #" + d.held.session_id),
      el("span", { class: "muted" }, ")"))));
    if (!decided.children.length) decided.append(el("li", { class: "muted" }, "Nothing decided since the daemon started."));
    const gone = document.getElementById("none-held");
    const mine = onlyId && lastDecided.find((d) => String(d.held.id) === String(onlyId));
    if (gone && mine) gone.textContent = decisionText(mine) + ".";
  });
  source.addEventListener("approvals", (event) => {
    let held = JSON.parse(event.data);
    document.getElementById("held-count").textContent = held.length ? String(held.length) : "";
    if (onlyId) held = held.filter((h) => String(h.id) === String(onlyId));
    // Keep what someone is typing: only cards that changed are replaced.
    const keep = new Map([...list.querySelectorAll("article[data-approval]")].map((n) => [n.dataset.approval, n]));
    const cards = held.map((h) => keep.get(String(h.id)) || heldCard(h));
    list.replaceChildren(...cards);
    const mine = onlyId && lastDecided.find((d) => String(d.held.id) === String(onlyId));
    if (!held.length) list.append(el("p", { class: "muted", id: "none-held" },
      mine ? decisionText(mine) + "." : onlyId ? `Approval #${onlyId} is not waiting (decided, timed out or withdrawn): its operation's session shows the outcome.`
        : "Nothing is waiting for approval."));
    list.dataset.loaded = "true";
  });
  source.onerror = () => { list.dataset.stream = "reconnecting"; };
}

async function heldBadge() {
  try {
    const held = await api("/v1/approvals");
    document.getElementById("held-count").textContent = held.length ? String(held.length) : "";
  } catch (_) { /* the page says what went wrong */ }
}

// ---- Grants ------------------------------------------------------------------------

async function grantsPage() {
  const table = el("table", { id: "grants" });
  const error = el("p", { class: "error", role: "alert" });
  const content = [table];
  if (isApprover()) {
    const field = (name, label, attrs) => el("label", { for: "g-" + name }, label, el("input", Object.assign({ name, id: "g-" + name, required: true }, attrs || {})));
    const form = el("form", { class: "filters", id: "new-grant" },
      field("agent", "Agent"), field("resource", "Resource"),
      field("operations", "Operations (comma-separated)", { placeholder: "write" }),
      field("minutes", "Minutes", { type: "number", min: "1", value: "30" }),
      field("reason", "Reason"),
      el("button", { type: "submit" }, "Grant"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      try {
        const grant = await api("/v1/grants", { body: {
          agent: data.get("agent"), resource: data.get("resource"),
          operations: String(data.get("operations")).split(",").map((s) => s.trim()).filter(Boolean),
          duration_seconds: Number(data.get("minutes")) * 60, reason: data.get("reason") } });
        toast("Grant #" + grant.id + " created");
        grantsPage();
      } catch (e) { error.textContent = e.message; }
    });
    content.unshift(el("h2", {}, "New grant"), form, error, el("h2", {}, "All grants"));
  }
  show("Grants", ...content);
  let grants;
  try { grants = await api("/v1/grants"); } catch (e) { error.textContent = e.message; return; }
  table.append(el("thead", {}, el("tr", {}, ["Grant", "Agent", "Resource", "Operations", "State", "Expires", "By", "Reason", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, grants.map((g) => el("tr", { "data-grant": g.id },
      el("td", {}, "#" + g.id), el("td", {}, g.agent), el("td", {}, g.resource),
      el("td", {}, (g.operations || []).join(", ")), el("td", {}, g.state),
      el("td", {}, when(g.expires_at)), el("td", {}, g.created_by || "uid " + g.created_by_uid),
      el("td", {}, g.reason, g.revoke_reason ? el("span", { class: "muted" }, " (revoked: " + g.revoke_reason + ")") : ""),
      el("td", {}, isApprover() && g.state === "active" ? el("button", { type: "button", onclick: async () => {
        const reason = prompt("Why revoke grant #" + g.id + "?");
        if (reason === null) return;
        try { await api(`/v1/grants/${g.id}/revoke`, { body: { reason } }); toast("Grant #" + g.id + " revoked"); grantsPage(); }
        catch (e) { error.textContent = e.message; }
      } }, "Revoke") : "")))));
  if (!grants.length) table.after(el("p", { class: "muted" }, "No grants."));
}

// ---- Status ------------------------------------------------------------------------

async function statusPage() {
  show("Status", el("p", {}, "Loading…"));
  let status, chain;
  try { [status, chain] = await Promise.all([api("/v1/status"), api("/v1/events/verify")]); }
  catch (e) { show("Status", el("p", { class: "error", role: "alert" }, e.message)); return; }
  const chainText = chain.chain_break
    ? el("span", { class: "deny" }, `broken at event ${chain.chain_break.seq}: ${chain.chain_break.detail}`)
    : el("span", { class: "allow" }, `intact: ${chain.events} events checked` + (chain.dropped_before ? `, ${chain.dropped_before} dropped by retention before them` : ""));
  show("Status",
    el("dl", { class: "facts" },
      el("dt", {}, "Version"), el("dd", {}, status.version + " (pid " + status.pid + ", up " + status.uptime_seconds + " s)"),
      el("dt", {}, "Kernel"), el("dd", {}, status.kernel),
      el("dt", {}, "Managed cgroup"), el("dd", {}, el("code", {}, status.cgroup_root)),
      el("dt", {}, "Policy"), el("dd", {}, `generation ${status.policy.generation}: ${status.policy.agents} agents, ${status.policy.resources} resources, ${status.policy.rules} rules, ${status.policy.active_grants} grants in force`),
      el("dt", {}, "Store"), el("dd", {}, `${status.store.sessions} sessions (${status.store.open} open, ${status.store.denied} denied)`),
      el("dt", {}, "Event chain"), el("dd", { id: "chain" }, chainText)),
    el("h2", {}, "Containment"),
    el("table", { id: "containment" },
      el("thead", {}, el("tr", {}, ["Way out", "Enforced", "What happens", "Mechanism", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, (status.enforcement || []).map((row) => el("tr", {},
        el("td", {}, el("code", {}, row.way_out)),
        el("td", {}, el("span", { class: row.enforced ? "allow" : "deny" }, row.enforced ? "yes" : "NO")),
        el("td", {}, row.expected), el("td", {}, row.mechanism), el("td", {}, row.detail))))),
    el("h2", {}, "Exporters"),
    (status.exporters || []).length ? el("table", { id: "exporters" },
      el("thead", {}, el("tr", {}, ["Name", "Kind", "Format", "Cursor", "Lag", "Exported", "Last error"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, status.exporters.map((x) => el("tr", {},
        el("td", {}, x.name), el("td", {}, x.kind), el("td", {}, x.format), el("td", {}, x.cursor),
        el("td", {}, x.lag), el("td", {}, x.exported), el("td", {}, x.last_error ? x.last_error + " (" + when(x.last_error_at) + ")" : "—")))))
      : el("p", { class: "muted" }, "No exporters configured."),
    el("h2", {}, "EBPF programs"),
    el("ul", {}, status.programs.map((p) => el("li", {}, p.name + ": ", el("span", { class: p.attached ? "allow" : "deny" }, p.attached ? "attached" : "NOT attached")))));
}

// ---- Start -------------------------------------------------------------------------

async function start() {
  try { state.me = await api("/me"); } catch (_) { return; }
  const user = state.me.user;
  document.getElementById("who").textContent = `${user.name || "uid " + user.uid} · ${user.role}`;
  document.body.dataset.role = user.role;
  document.getElementById("sign-out").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "x-sluice-csrf": state.me.csrf } });
    location.href = "/login";
  });
  const [, page, id] = location.pathname.split("/");
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
  heldBadge();
  if (page === "sessions" && id) await sessionPage(id);
  else if (page === "sessions") await sessionsPage();
  else if (page === "approvals") approvalsPage(id);
  else if (page === "grants") await grantsPage();
  else if (page === "status") await statusPage();
  document.body.dataset.ready = "true";
}

start();
