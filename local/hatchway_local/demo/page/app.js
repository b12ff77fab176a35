// The demo page: start demo runs and watch them stream, with the JS client.
// The page keeps what it has shown (text, events, the last seq) in sessionStorage,
// so a reload shows it again and resumes after that seq: no chunk twice, none lost.
import { HatchwayClient } from "/client/index.js";

const STORE_KEY = "hatchway-demo:runs";
const config = await (await fetch("/config.json")).json();

// Every socket the client opens, so "Drop connection" can close them as a network
// loss would (the client then reconnects and resumes by itself).
const sockets = new Set();
class TrackedWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    sockets.add(this);
    this.addEventListener("close", () => sockets.delete(this));
  }
}
// A token that expired while the page was away is renewed as a frontend would: by
// asking its backend. Here the local stack is open, so the page asks the route your
// backend would call (POST /runs/{runId}/token); deployed, that route is IAM-only.
async function renewToken(runId) {
  const response = await fetch(`${config.apiUrl}/runs/${encodeURIComponent(runId)}/token`, { method: "POST" });
  if (!response.ok) throw new Error(`could not renew the token: HTTP ${response.status}`);
  const { token } = await response.json();
  const view = views.get(runId);
  if (view) {
    view.state.token = token;
    save();
  }
  return token;
}
const client = new HatchwayClient({
  baseUrl: config.apiUrl,
  WebSocket: TrackedWebSocket,
  getToken: renewToken,
});

const $ = (selector, root = document) => root.querySelector(selector);
const views = new Map(); // runId -> RunView

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY) ?? "[]");
  } catch {
    return [];
  }
}

let unsaved = false;
function save() {
  try {
    sessionStorage.setItem(STORE_KEY, JSON.stringify([...views.values()].map((v) => v.state)));
  } catch (error) {
    // Over the storage quota (a few MB: big chunks add up): the runs go on streaming,
    // only a reload would no longer bring them back. Said once.
    if (!unsaved) console.warn(`the page's runs no longer fit in sessionStorage: ${error}`);
    unsaved = true;
  }
}

function formatBytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

async function sha256Of(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const digest = await crypto.subtle.digest("SHA-256", await response.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function gapMark() {
  const mark = document.createElement("span");
  mark.className = "gap-mark";
  mark.title = "frames were lost here: see the gap below";
  return mark;
}

class RunView {
  constructor(state) {
    this.state = state; // what is saved: the run, what it showed, its last seq
    this.controller = null;
    this.element = $("#run-template").content.firstElementChild.cloneNode(true);
    this.part = (role) => $(`[data-role="${role}"]`, this.element);
    this.part("workflow").textContent = state.workflow;
    this.part("run-id").textContent = state.runId;
    state.gapsAt ??= [];
    this.renderText();
    for (const event of state.events) this.renderEvent(event);
    this.renderStatus();
    this.renderCounts();
    $('[data-action="remove"]', this.element).addEventListener("click", () => this.remove());
  }

  // The newest run's card carries the stable ids the automation reads.
  takeIds() {
    for (const id of ["run-id", "text", "status"]) document.getElementById(id)?.removeAttribute("id");
    this.part("run-id").id = "run-id";
    this.part("text").id = "text";
    this.part("status").id = "status";
  }

  follow() {
    if (this.state.final) return;
    const run = client.attach(this.state.runId, this.state.token, this.state.websocketUrl);
    this.controller = new AbortController();
    run.on("connection", (connection) => this.renderConnection(connection));
    const frames = run.frames({ after: this.state.lastSeq, signal: this.controller.signal });
    (async () => {
      try {
        for await (const frame of frames) this.apply(frame);
      } catch (error) {
        if (error?.name !== "AbortError") this.addEvent({ kind: "error", text: String(error?.message ?? error) });
      } finally {
        this.renderConnection(this.state.final ? "done" : "closed");
      }
    })();
  }

  apply(frame) {
    if (frame.seq <= this.state.lastSeq) {
      // The client promises each frame once: a repeat here is its bug (the browser tests
      // fail on any console error), and the page still shows it only once.
      console.error(`the client delivered seq ${frame.seq} again (the page had ${this.state.lastSeq})`);
      return;
    }
    this.state.lastSeq = frame.seq;
    if (frame.type === "chunk") {
      this.state.chunks += 1;
      this.state.text += frame.data ?? "";
      this.part("text").append(frame.data ?? "");
      if (frame.url) this.addEvent({ kind: "info", text: `chunk ${frame.seq}: ${formatBytes(frame.size)} fetched from S3 by reference` });
    } else if (frame.type === "file") {
      this.addEvent({ kind: "file", seq: frame.seq, name: frame.name, size: frame.size, sha256: frame.sha256, url: frame.url });
    } else if (frame.type === "gap") {
      const skipped = frame.skipped ? ` (seqs ${frame.skipped[0]}–${frame.skipped[1]} not in the log)` : "";
      this.addEvent({ kind: "gap", text: `gap at seq ${frame.seq}: ${frame.reason}${skipped}` });
      this.state.gapsAt.push(this.state.text.length);
      this.part("text").append(gapMark());
    } else if (frame.type === "status") {
      this.state.status = frame.status;
      this.state.final = Boolean(frame.final);
      const at = `seq ${frame.seq} · ${frame.status}`;
      if (frame.error) this.addEvent({ kind: "error", text: `${at}: ${frame.error}` });
      else if (frame.final && frame.output !== undefined) {
        this.addEvent({ kind: "output", text: `${at} · output ${JSON.stringify(frame.output)}` });
      } else this.addEvent({ kind: "status", text: at });
      this.renderStatus();
    }
    this.renderCounts();
    save();
  }

  // The text, with a mark where each gap fell. The mark is drawn by CSS (::before), so
  // the element's textContent stays exactly the run's text.
  renderText() {
    const element = this.part("text");
    element.replaceChildren();
    let from = 0;
    for (const at of this.state.gapsAt) {
      element.append(this.state.text.slice(from, at), gapMark());
      from = at;
    }
    element.append(this.state.text.slice(from));
  }

  addEvent(event) {
    this.state.events.push(event);
    this.renderEvent(event);
  }

  renderEvent(event) {
    const item = document.createElement("li");
    item.className = `event ${event.kind}`;
    if (event.kind === "file") {
      item.dataset.sha256 = event.sha256;
      const link = Object.assign(document.createElement("a"), { href: event.url, textContent: "Download" });
      link.dataset.role = "download";
      link.download = event.name;
      const hash = Object.assign(document.createElement("code"), { textContent: event.sha256 });
      hash.className = "sha";
      const check = Object.assign(document.createElement("span"), { className: "check", textContent: "checking…" });
      item.append(`${event.name} · ${formatBytes(event.size)} · `, link, " · sha256 ", hash, " ", check);
      sha256Of(event.url).then(
        (actual) => {
          check.textContent = actual === event.sha256 ? "✓ verified" : "✗ does not match";
          check.dataset.verified = String(actual === event.sha256);
        },
        () => (check.textContent = "(link expired: reload to mint a fresh one)"),
      );
    } else {
      item.textContent = event.text;
    }
    this.part("events").append(item);
  }

  renderStatus() {
    const badge = this.part("status");
    badge.textContent = this.state.status;
    badge.className = `badge status ${this.state.status.toLowerCase()}`;
    if (this.state.final) badge.dataset.final = "true";
    else delete badge.dataset.final;
    this.element.classList.toggle("final", this.state.final);
  }

  renderConnection(connection) {
    const badge = this.part("connection");
    const was = badge.textContent;
    badge.textContent = connection;
    badge.className = `badge connection ${connection}`;
    // Once per episode, not per attempt: what happened, and where it resumes.
    if (connection === "reconnecting" && was !== "reconnecting" && was !== "fallback") {
      this.state.reconnects = (this.state.reconnects ?? 0) + 1;
      this.addEvent({ kind: "info", text: `connection lost after seq ${this.state.lastSeq}: reconnecting, then resuming with after=${this.state.lastSeq}` });
      this.renderCounts();
      save();
    } else if (connection === "fallback" && was !== "fallback") {
      this.addEvent({ kind: "info", text: `the WebSocket does not connect: catching up over GET /runs/{id}/frames` });
      save();
    }
  }

  renderCounts() {
    const { lastSeq, chunks, reconnects = 0 } = this.state;
    this.part("counts").textContent = `seq ${lastSeq} · ${chunks} chunks · ${reconnects} reconnects`;
  }

  remove() {
    this.controller?.abort();
    views.delete(this.state.runId);
    this.element.remove();
    [...views.values()].at(-1)?.takeIds();
    save();
    $("#empty").hidden = views.size > 0;
  }
}

function show(state) {
  const view = new RunView(state);
  views.set(state.runId, view);
  $("#runs").prepend(view.element);
  $("#empty").hidden = true;
  view.takeIds();
  save();
  view.follow();
  return view;
}

async function start(workflow, input) {
  const error = $("#start-error");
  error.hidden = true;
  try {
    const run = await client.start(workflow, input);
    show({
      runId: run.runId, token: run.token, websocketUrl: run.websocketUrl, workflow,
      text: "", events: [], lastSeq: 0, chunks: 0, status: "QUEUED", final: false,
    });
  } catch (failure) {
    error.textContent = `Could not start ${workflow}: ${failure?.message ?? failure}`;
    error.hidden = false;
  }
}

function setUp() {
  $("#api-url").textContent = config.apiUrl;
  const select = $("#workflow");
  const input = $("#input");
  for (const name of Object.keys(config.workflows)) select.append(new Option(name, name));
  const fill = () => (input.value = JSON.stringify(config.workflows[select.value] ?? {}));
  select.addEventListener("change", fill);
  $("#drop").addEventListener("click", () => {
    for (const socket of sockets) socket.close(4000, "dropped by the demo page");
  });
  $("#start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(input.value || "{}");
    } catch {
      $("#start-error").textContent = "The input is not JSON.";
      $("#start-error").hidden = false;
      return;
    }
    start(select.value, parsed);
  });

  for (const state of load()) show(state); // oldest first: the newest ends on top
  const params = new URLSearchParams(location.search);
  const wanted = params.get("workflow");
  if (wanted && config.workflows[wanted]) select.value = wanted;
  fill();
  if (params.has("input")) input.value = params.get("input");
  if (params.get("autostart") === "1") {
    // Once: a reload resumes the run it started instead of starting another.
    params.delete("autostart");
    history.replaceState(null, "", `${location.pathname}?${params}`);
    $("#start-form").requestSubmit();
  }
}

setUp();
