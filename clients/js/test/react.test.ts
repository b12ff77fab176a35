import assert from "node:assert/strict";
import { after, before, test, type TestContext } from "node:test";
import { GlobalRegistrator } from "@happy-dom/global-registrator";
import type { HatchwayClient as Client, WebSocketConstructor } from "hatchway-client";
import type { HatchwayRunState, UseHatchwayRunOptions } from "hatchway-client/react";
import { FakeServer, WebSocket } from "./fake-server.js";

// Node's own fetch, timers and WebSocket for the client: happy-dom's globals are for React only.
const nodeFetch = globalThis.fetch;

type ReactModule = typeof import("react");
type ReactDomClient = typeof import("react-dom/client");
let React: ReactModule;
let ReactDOM: ReactDomClient;
let useHatchwayRun: (options: UseHatchwayRunOptions | null) => HatchwayRunState;
let HatchwayClient: typeof Client;

before(async () => {
  GlobalRegistrator.register({ url: "http://localhost/" });
  // react-dom looks for a DOM when it loads: import it after the globals exist
  React = await import("react");
  ReactDOM = await import("react-dom/client");
  ({ useHatchwayRun } = await import("hatchway-client/react"));
  ({ HatchwayClient } = await import("hatchway-client"));
});

after(async () => {
  // React runs an unmount's passive effects (our cleanup) in a scheduler task (setImmediate in
  // Node): let the ones already queued run before the DOM globals go away
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
  await GlobalRegistrator.unregister();
});

async function setup(t: TestContext): Promise<{ server: FakeServer; client: Client }> {
  const server = await FakeServer.start();
  const client = new HatchwayClient({
    baseUrl: server.baseUrl,
    websocketUrl: server.wsUrl,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    fetch: nodeFetch,
    storage: null,
    reconnect: { baseMs: 5, capMs: 50 },
  });
  t.after(async () => {
    client.close();
    await server.close();
  });
  return { server, client };
}

/** Mount a component using the hook; `until` resolves with the first rendered state that satisfies it. */
function mount(options: UseHatchwayRunOptions | null): {
  container: HTMLElement;
  renders: HatchwayRunState[];
  until: (predicate: (state: HatchwayRunState) => boolean) => Promise<HatchwayRunState>;
  unmount: () => void;
} {
  const renders: HatchwayRunState[] = [];
  const waiters: { predicate: (s: HatchwayRunState) => boolean; resolve: (s: HatchwayRunState) => void }[] = [];
  function Viewer(): ReturnType<typeof React.createElement> {
    const state = useHatchwayRun(options);
    renders.push(state);
    for (const waiter of [...waiters]) {
      if (waiter.predicate(state)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(state);
      }
    }
    return React.createElement(
      "div",
      null,
      React.createElement("pre", { id: "text" }, state.text),
      React.createElement("span", { id: "status" }, state.status?.status ?? ""),
      React.createElement("span", { id: "connection" }, state.connection),
    );
  }
  const container = document.createElement("div");
  document.body.appendChild(container);
  const root = ReactDOM.createRoot(container);
  root.render(React.createElement(Viewer));
  return {
    container,
    renders,
    until: (predicate) => {
      const done = renders.find(predicate);
      if (done) return Promise.resolve(done);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("timed out waiting for a render")), 15_000);
        waiters.push({
          predicate,
          resolve: (s) => {
            clearTimeout(timer);
            resolve(s);
          },
        });
      });
    },
    unmount: () => root.unmount(),
  };
}

/** React commits the DOM after render returns: wait until the container shows what a state said. */
async function committed(container: HTMLElement, selector: string, text: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (container.querySelector(selector)?.textContent === text) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.equal(container.querySelector(selector)?.textContent, text);
}

test("useHatchwayRun renders a run's frames as they come and follows it to COMPLETED", async (t) => {
  const { server, client } = await setup(t);
  server.addRun("hook-1", "t1", [
    { type: "status", status: "RUNNING", final: false },
    { type: "chunk", data: "Happy families " },
    { type: "gap", reason: "relay_lost" },
    { type: "chunk", data: "are all alike." },
    { type: "status", status: "COMPLETED", final: true, output: { chunks: 2 } },
  ]);
  const view = mount({ client, runId: "hook-1", token: "t1" });
  const first = await view.until(() => true);
  assert.equal(first.connection, "connecting");
  assert.equal(first.text, "");
  const done = await view.until((s) => s.status?.status === "COMPLETED" && s.connection === "closed");
  assert.equal(done.text, "Happy families are all alike.");
  assert.deepEqual(
    done.frames.map((f) => f.seq),
    [1, 2, 3, 4, 5],
  );
  assert.equal(done.status?.final, true);
  assert.equal(done.gap?.seq, 3);
  assert.equal(done.error, null);
  assert.ok(view.renders.some((s) => s.connection === "open"));
  await committed(view.container, "#text", "Happy families are all alike.");
  await committed(view.container, "#status", "COMPLETED");
  view.unmount();
  assert.equal(server.subscribes("hook-1").length, 1);
  assert.equal(server.subscribes("hook-1")[0]!.after, 0);
});

test("useHatchwayRun stops following on unmount: unsubscribe, socket closed", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("hook-2", "t2", [
    { type: "chunk", data: "one " },
    { type: "chunk", data: "two " },
    { type: "chunk", data: "three" },
    { type: "status", status: "COMPLETED", final: true },
  ]);
  fake.wsUpTo = 2; // live: the rest has not come yet
  const view = mount({ client, runId: "hook-2", token: "t2", after: 0 });
  const partial = await view.until((s) => s.frames.length === 2);
  assert.equal(partial.text, "one two ");
  assert.equal(partial.status, null);
  assert.equal(partial.connection, "open");
  view.unmount();
  await server.waitFor(() => server.messages.some((m) => m.action === "unsubscribe" && m.runId === "hook-2"), "unsubscribe");
  await server.connections[0]!.closedPromise;
  const rendered = view.renders.length;
  // more frames for the run (were it still followed) would render; nothing does after unmount
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(view.renders.length, rendered);
});

test("useHatchwayRun({ run }) follows a Run made by the caller; an error is reported in state", async (t) => {
  const { server, client } = await setup(t);
  server.addRun("hook-3", "t3", [
    { type: "chunk", data: "a" },
    { type: "status", status: "FAILED", final: true, error: "boom" },
  ]);
  const run = client.attach("hook-3", "t3");
  const view = mount({ run });
  const done = await view.until((s) => s.status?.final === true);
  assert.equal(done.text, "a");
  assert.equal(done.status?.status, "FAILED");
  assert.equal(done.status?.error, "boom");
  view.unmount();

  const missing = mount({ client, runId: "no-such-run", token: "x" });
  const failed = await missing.until((s) => s.error !== null);
  assert.equal((failed.error as Error & { code?: string }).code, "not_found");
  assert.equal(failed.connection, "closed");
  missing.unmount();

  const idle = mount(null);
  const state = await idle.until(() => true);
  assert.equal(state.connection, "closed");
  assert.deepEqual(state.frames, []);
  idle.unmount();
});

test("useHatchwayRun({ run }) unmounting ends the hook's watch alone: another watcher keeps the Run followed", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("hook-4", "t4", [
    { type: "chunk", data: "a" },
    { type: "chunk", data: "b" },
    { type: "status", status: "COMPLETED", final: true },
  ]);
  fake.wsUpTo = 1;
  const run = client.attach("hook-4", "t4");
  // count the hook's listeners going away: its cleanup has run once both are off
  const on = run.on.bind(run);
  let listeners = 0;
  let cleaned!: () => void;
  const cleanedUp = new Promise<void>((resolve) => (cleaned = resolve));
  run.on = ((event: never, handler: never) => {
    listeners += 1;
    const off = on(event, handler);
    return () => {
      off();
      if (--listeners === 0) cleaned();
    };
  }) as typeof run.on;
  const text = run.text();
  const view = mount({ run });
  await view.until((s) => s.frames.length === 1);
  view.unmount();
  await cleanedUp;
  assert.equal(run.connection, "open");
  server.connections[0]!.send(fake.frames[1]);
  server.connections[0]!.send(fake.frames[2]);
  assert.equal(await text, "ab");
  assert.equal(server.messages.filter((m) => m.action === "unsubscribe").length, 0);
});
