import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import {
  HatchwayClient,
  HatchwayError,
  RunFailedError,
  backoffDelay,
  type ConnectionState,
  type Frame,
  type GapFrame,
  type HatchwayClientOptions,
  type Run,
  type WebSocketConstructor,
} from "hatchway-client";
import { FakeServer, FakeStorage, WebSocket, type WireFrame } from "./fake-server.js";

async function setup(t: TestContext, options: HatchwayClientOptions = {}): Promise<{ server: FakeServer; client: HatchwayClient }> {
  const server = await FakeServer.start();
  const client = new HatchwayClient({
    baseUrl: server.baseUrl,
    websocketUrl: server.wsUrl,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    storage: null,
    ...options,
    reconnect: { baseMs: 5, capMs: 50, ...options.reconnect },
  });
  t.after(async () => {
    client.close();
    await server.close();
  });
  return { server, client };
}

/** Every frame the iterator yields; fails after 15 s instead of hanging when a behaviour broke. */
async function collect(frames: AsyncIterable<Frame>, timeoutMs = 15_000): Promise<Frame[]> {
  const out: Frame[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms with seqs [${seqs(out).join(",")}]`)), timeoutMs);
  });
  const reading = (async () => {
    for await (const frame of frames) out.push(frame);
    return out;
  })();
  try {
    return await Promise.race([reading, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

const seqs = (frames: Frame[]): number[] => frames.map((f) => f.seq);
const chunk = (data: string): Omit<WireFrame, "runId" | "seq"> => ({ type: "chunk", data });
const completed = (output: unknown = { ok: true }): Omit<WireFrame, "runId" | "seq"> => ({
  type: "status",
  status: "COMPLETED",
  final: true,
  output,
});
const textOf = (frames: Frame[]): string => frames.map((f) => (f.type === "chunk" ? (f.data ?? "") : "")).join("");

/** `promise`, or a rejection after `timeoutMs` (a behaviour that broke fails the test instead of hanging it). */
async function within<T>(promise: Promise<T>, what: string, timeoutMs = 8_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once the run has delivered seq `seq`. */
function reached(run: Run, seq: number): Promise<void> {
  if (run.lastSeq >= seq) return Promise.resolve();
  return new Promise((resolve) => {
    const off = run.on("frame", () => {
      if (run.lastSeq < seq) return;
      off();
      resolve();
    });
  });
}

function states(run: Run): ConnectionState[] {
  const seen: ConnectionState[] = [];
  run.on("connection", (state) => seen.push(state));
  return seen;
}

test("backoffDelay is full jitter over a capped exponential", () => {
  assert.equal(backoffDelay(0, 100, 1000, () => 1), 100);
  assert.equal(backoffDelay(3, 100, 1000, () => 0.5), 400);
  assert.equal(backoffDelay(10, 100, 1000, () => 0.5), 500);
  assert.equal(backoffDelay(2000, 100, 1000, () => 1), 1000);
  assert.equal(backoffDelay(5, 100, 1000, () => 0), 0);
});

test("1. after a drop it resubscribes with after=lastSeq and drops the frames re-sent", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r1", "t1", [chunk("a"), chunk("b"), chunk("c"), chunk("d"), chunk("e"), completed()]);
  server.onSubscribe = (conn, message) => {
    conn.send({ type: "subscribed", runId: "r1", status: "RUNNING", lastSeq: 3 });
    // the first connection sends 1..3 and is dropped (below); the second re-sends from seq 2
    const from = conn.index === 0 ? 1 : 2;
    const to = conn.index === 0 ? 3 : 6;
    assert.equal(message.runId, "r1");
    for (const frame of fake.frames) if (frame.seq! >= from && frame.seq! <= to) conn.send(frame);
  };
  const run = client.attach("r1", "t1");
  const seen = states(run);
  run.on("frame", (frame) => {
    if (frame.seq === 3 && server.connections.length === 1) server.connections[0]!.drop();
  });
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4, 5, 6]);
  assert.equal(textOf(frames), "abcde");
  const subscribes = server.subscribes("r1");
  assert.equal(subscribes.length, 2);
  assert.equal(subscribes[0]!.after, 0);
  assert.equal(subscribes[1]!.after, 3);
  assert.equal(subscribes[1]!.conn, 1);
  assert.equal(server.connections.length, 2);
  assert.equal(run.lastSeq, 6);
  assert.ok(seen.indexOf("reconnecting") > seen.indexOf("open"), `states: ${seen.join(",")}`);
  assert.equal(seen.at(-1), "closed");
});

test("2. reconnect delays grow exponentially up to the cap (full jitter, random injected)", async (t) => {
  const { server, client } = await setup(t, {
    random: () => 1,
    reconnect: { baseMs: 10, capMs: 40, fallbackAfter: 1000 },
  });
  server.addRun("r2", "t2", [chunk("x"), completed()]);
  server.refuseUpgrade = () => true;
  const run = client.attach("r2", "t2");
  const delays: number[] = [];
  run.on("connection", (state, info) => {
    if (state === "reconnecting" && info.delayMs !== undefined) delays.push(info.delayMs);
  });
  const following = run.follow();
  await server.waitFor(() => server.upgrades.length >= 7, "7 upgrade attempts");
  run.close();
  await assert.rejects(following, (e: Error) => e.name === "AbortError");
  assert.deepEqual(delays.slice(0, 6), [10, 20, 40, 40, 40, 40]);
  // the client really waited that long between attempts (timers may fire late, never early)
  for (let i = 1; i < 7; i++) {
    const gap = server.upgrades[i]!.at - server.upgrades[i - 1]!.at;
    assert.ok(gap >= delays[i - 1]! - 2, `attempt ${i}: ${gap.toFixed(1)} ms after the previous, wanted >= ${delays[i - 1]}`);
  }
  assert.ok(server.upgrades.every((u) => u.token === "t2" && !u.accepted));
});

test("2b. the jitter scales the delay by random()", async (t) => {
  const { server, client } = await setup(t, {
    random: () => 0.5,
    reconnect: { baseMs: 8, capMs: 1000, fallbackAfter: 1000 },
  });
  server.addRun("r2b", "t", [completed()]);
  server.refuseUpgrade = () => true;
  const run = client.attach("r2b", "t");
  const delays: number[] = [];
  run.on("connection", (state, info) => {
    if (state === "reconnecting" && info.delayMs !== undefined) delays.push(info.delayMs);
  });
  run.follow().catch(() => undefined);
  await server.waitFor(() => server.upgrades.length >= 4, "4 upgrade attempts");
  run.close();
  assert.deepEqual(delays.slice(0, 3), [4, 8, 16]);
});

test("3. a gap is surfaced: the iterator yields it and the gap event fires", async (t) => {
  const { server, client } = await setup(t);
  server.addRun("r3", "t3", [
    { type: "chunk", seq: 1, data: "before " },
    { type: "gap", seq: 5, reason: "relay_lost", skipped: [2, 4] },
    { type: "chunk", seq: 6, data: "after" },
    { type: "status", seq: 7, status: "COMPLETED", final: true },
  ]);
  const run = client.attach("r3", "t3");
  const gaps: GapFrame[] = [];
  run.on("gap", (gap) => gaps.push(gap));
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 5, 6, 7]);
  const gap = frames[1]!;
  assert.equal(gap.type, "gap");
  assert.deepEqual(gap.type === "gap" && gap.skipped, [2, 4]);
  assert.equal(gap.type === "gap" && gap.reason, "relay_lost");
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0], gap);
  assert.equal(await run.text(), "before after");
});

test("4. a by-reference chunk is fetched in order; an expired url (403) is refreshed through /frames", async (t) => {
  const { server, client } = await setup(t);
  const big = "BIG ".repeat(5000);
  server.blob("c2", big);
  server.blobs.get("c2")!.version = 2; // what the socket carries (v=1) has expired
  const fake = server.addRun("r4", "t4", [
    chunk("a "),
    { type: "chunk", url: server.blobUrl("c2", 1), size: big.length, expiresAt: "2000-01-01T00:00:00Z" },
    chunk(" c"),
    completed(),
  ]);
  fake.httpFrames.set(2, { ...fake.frames[1]!, url: server.blobUrl("c2", 2), expiresAt: "2099-01-01T00:00:00Z" });
  const run = client.attach("r4", "t4");
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4]);
  const fetched = frames[1]!;
  assert.equal(fetched.type === "chunk" && fetched.data, big);
  assert.equal(fetched.type === "chunk" && fetched.url, server.blobUrl("c2", 2));
  assert.equal(await run.text(), `a ${big} c`);
  assert.deepEqual(server.blobs.get("c2")!.fetches, [1, 2]);
  const refresh = server.requests.filter((r) => r.path.startsWith("/runs/r4/frames"));
  assert.equal(refresh.length, 1);
  assert.equal(refresh[0]!.path, "/runs/r4/frames?after=1&limit=1");
  assert.equal(refresh[0]!.authorization, "Bearer t4");
});

test("4b. fetchReferences: false passes a by-reference chunk on as it came", async (t) => {
  const { server, client } = await setup(t, { fetchReferences: false });
  server.blob("c", "never fetched");
  server.addRun("r4b", "t", [{ type: "chunk", url: server.blobUrl("c"), size: 13 }, completed()]);
  const frames = await collect(client.attach("r4b", "t").frames());
  const first = frames[0]!;
  assert.equal(first.type === "chunk" && first.data, undefined);
  assert.equal(first.type === "chunk" && first.url, server.blobUrl("c"));
  assert.deepEqual(server.blobs.get("c")!.fetches, []);
});

test("4c. a by-reference final status is fetched and the full frame used; file frames pass as objects", async (t) => {
  const { server, client } = await setup(t);
  const full = { type: "status", runId: "r4c", seq: 3, status: "COMPLETED", final: true, output: { text: "x".repeat(200_000) } };
  server.blob("s3", JSON.stringify(full), "application/json");
  const file = {
    type: "file",
    name: "report.pdf",
    contentType: "application/pdf",
    size: 1234,
    sha256: "ab".repeat(32),
    url: server.blobUrl("file-not-fetched"),
    expiresAt: "2099-01-01T00:00:00Z",
  };
  server.addRun("r4c", "t", [
    chunk("hi"),
    file,
    { type: "status", status: "COMPLETED", final: true, url: server.blobUrl("s3"), size: 200_100 },
  ]);
  const run = client.attach("r4c", "t");
  const files: Frame[] = [];
  run.on("file", (f) => files.push(f));
  const result = await run.result();
  assert.deepEqual(result.output, full.output);
  assert.equal(result.url, undefined);
  assert.equal(result.seq, 3);
  assert.equal(files.length, 1);
  assert.deepEqual(files[0], { runId: "r4c", seq: 2, ...file });
});

test("5. an unauthorized error frame asks getToken; the resubscribe carries the new token and after", async (t) => {
  const asked: string[] = [];
  let fake: ReturnType<FakeServer["addRun"]> | undefined;
  const { server, client } = await setup(t, {
    getToken: async (runId) => {
      asked.push(runId);
      fake!.tokens.delete("old");
      fake!.tokens.add("new");
      return "new";
    },
  });
  fake = server.addRun("r5", "old", [chunk("1"), chunk("2"), chunk("3"), chunk("4"), completed()]);
  server.onSubscribe = (conn, message, run) => {
    if (message.token === "old") {
      conn.send({ type: "subscribed", runId: "r5", status: "RUNNING", lastSeq: 2 });
      conn.send(fake!.frames[0]);
      conn.send(fake!.frames[1]);
      conn.send({ type: "error", code: "unauthorized", runId: "r5", message: "the run token expired; subscribe again with after=2" });
    } else server.serve(conn, message, run);
  };
  const run = client.attach("r5", "old");
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4, 5]);
  assert.deepEqual(asked, ["r5"]);
  const subscribes = server.subscribes("r5");
  assert.equal(subscribes.length, 2);
  assert.equal(subscribes[1]!.token, "new");
  assert.equal(subscribes[1]!.after, 2);
  assert.equal(server.connections.length, 1, "the same connection");
  assert.equal(run.token, "new");
});

test("5b. without getToken an unauthorized error frame fails the run with HatchwayError", async (t) => {
  const { server, client } = await setup(t);
  server.addRun("r5b", "good", [chunk("1"), completed()]);
  const run = client.attach("r5b", "wrong");
  await assert.rejects(collect(run.frames()), (e: unknown) => e instanceof HatchwayError && e.code === "unauthorized");
});

test("5c. a $connect refused for an expired token: the fallback's 401 asks getToken, the next connect carries the new token", async (t) => {
  const asked: string[] = [];
  const { server, client } = await setup(t, {
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 2 },
    getToken: (runId) => {
      asked.push(runId);
      return "fresh";
    },
  });
  const fake = server.addRun("r5c", "fresh", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  fake.httpUpTo = 2;
  server.refuseUpgrade = (_index, token) => token !== "fresh";
  const run = client.attach("r5c", "expired");
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4]);
  assert.deepEqual(asked, ["r5c"]);
  assert.deepEqual(
    server.upgrades.map((u) => [u.token, u.accepted]),
    [
      ["expired", false],
      ["expired", false],
      ["fresh", true],
    ],
  );
  const pages = server.requests.filter((r) => r.path.startsWith("/runs/r5c/frames"));
  assert.deepEqual(
    pages.map((r) => r.authorization),
    ["Bearer expired", "Bearer fresh", "Bearer fresh"],
  );
  assert.deepEqual(
    server.subscribes("r5c").map((s) => [s.token, s.after]),
    [["fresh", 2]],
  );
  assert.equal(fake.tokens.has("expired"), false);
});

test("6. HTTP fallback: upgrades refused, the frames come from /frames and the run ends at the final status", async (t) => {
  const { server, client } = await setup(t, { random: () => 1, reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 2 } });
  server.defaultLimit = 2; // pages: the client follows `next`
  server.addRun("r6", "t6", [chunk("a"), chunk("b"), chunk("c"), chunk("d"), completed({ n: 4 })]);
  server.refuseUpgrade = () => true;
  const run = client.attach("r6", "t6");
  const seen = states(run);
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4, 5]);
  assert.equal(textOf(frames), "abcd");
  assert.equal(server.upgrades.length, 2, "no connect after the run ended");
  const pages = server.requests.filter((r) => r.path.startsWith("/runs/r6/frames"));
  assert.deepEqual(
    pages.map((r) => r.path),
    ["/runs/r6/frames?after=0", "/runs/r6/frames?after=2", "/runs/r6/frames?after=4"],
  );
  assert.ok(pages.every((r) => r.authorization === "Bearer t6"));
  assert.ok(seen.includes("fallback"));
  assert.equal(seen.at(-1), "closed");
  assert.deepEqual((await run.result()).output, { n: 4 });
});

test("6b. HTTP fallback, then the WebSocket again: subscribe with after = what HTTP delivered", async (t) => {
  const { server, client } = await setup(t, { random: () => 1, reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 2 } });
  const fake = server.addRun("r6b", "t", [chunk("1"), chunk("2"), chunk("3"), chunk("4"), chunk("5"), completed()]);
  fake.httpUpTo = 3; // the run still streams: /frames has 1..3 so far
  server.refuseUpgrade = (index) => index < 2;
  const run = client.attach("r6b", "t");
  const seen = states(run);
  const frames = await collect(run.frames());
  assert.deepEqual(seqs(frames), [1, 2, 3, 4, 5, 6]);
  const subscribes = server.subscribes("r6b");
  assert.equal(subscribes.length, 1);
  assert.equal(subscribes[0]!.after, 3);
  assert.equal(server.upgrades.length, 3);
  const fallback = seen.indexOf("fallback");
  assert.ok(fallback >= 0 && seen.indexOf("open", fallback) > fallback, `states: ${seen.join(",")}`);
});

test("7. two runs share one socket: one connection, two subscribes, a batch split between them", async (t) => {
  const { server, client } = await setup(t);
  const a = server.addRun("rA", "tA", [chunk("a1"), chunk("a2"), completed({ run: "A" })]);
  const b = server.addRun("rB", "tB", [chunk("b1"), chunk("b2"), completed({ run: "B" })]);
  server.onSubscribe = (conn) => {
    if (conn.messages.filter((m) => m.action === "subscribe").length < 2) return;
    conn.batch([
      { type: "subscribed", runId: "rA", status: "RUNNING", lastSeq: 0 },
      { type: "subscribed", runId: "rB", status: "RUNNING", lastSeq: 0 },
      a.frames[0],
      b.frames[0],
      a.frames[1],
      b.frames[1],
      b.frames[2],
      a.frames[2],
    ]);
  };
  const runA = client.attach("rA", "tA");
  const runB = client.attach("rB", "tB");
  const [framesA, framesB] = await Promise.all([collect(runA.frames()), collect(runB.frames())]);
  assert.equal(textOf(framesA), "a1a2");
  assert.equal(textOf(framesB), "b1b2");
  assert.deepEqual(seqs(framesA), [1, 2, 3]);
  assert.deepEqual(seqs(framesB), [1, 2, 3]);
  assert.equal(server.connections.length, 1);
  assert.equal(server.upgrades.length, 1);
  const subscribes = server.subscribes();
  assert.deepEqual(
    subscribes.map((s) => [s.runId, s.token, s.conn]),
    [
      ["rA", "tA", 0],
      ["rB", "tB", 0],
    ],
  );
  await server.connections[0]!.closedPromise; // the last run done: the socket closes
});

test("7b. two Runs of one run on a client both get its frames; closing one keeps the other subscribed", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("same", "t", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  fake.wsUpTo = 2;
  const a = client.attach("same", "t");
  const b = client.attach("same", "t");
  const bothAt2 = new Promise<void>((resolve) => {
    const check = (): void => {
      if (a.lastSeq === 2 && b.lastSeq === 2) resolve();
    };
    a.on("frame", check);
    b.on("frame", check);
  });
  const framesA = collect(a.frames());
  const framesB = collect(b.frames());
  await bothAt2;
  a.close();
  assert.deepEqual(seqs(await framesA), [1, 2]);
  const conn = server.connections[0]!;
  conn.send(fake.frames[2]);
  conn.send(fake.frames[3]);
  assert.deepEqual(seqs(await framesB), [1, 2, 3, 4]);
  assert.equal(server.connections.length, 1);
  assert.equal(server.messages.filter((m) => m.action === "unsubscribe").length, 0);
});

test("8. abort: the iterator throws signal.reason and the run unsubscribes", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r8", "t8", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  fake.wsUpTo = 2; // a live run: nothing after 2 yet
  const controller = new AbortController();
  const reason = new Error("user left");
  const run = client.attach("r8", "t8");
  run.on("frame", (frame) => {
    if (frame.seq === 2) setTimeout(() => controller.abort(reason), 0); // while the iterator waits
  });
  const seen: number[] = [];
  await assert.rejects(
    (async () => {
      for await (const frame of run.frames({ signal: controller.signal })) seen.push(frame.seq);
    })(),
    (e: unknown) => e === reason,
  );
  assert.deepEqual(seen, [1, 2]);
  await server.waitFor(() => server.messages.some((m) => m.action === "unsubscribe" && m.runId === "r8"), "unsubscribe");
  await server.connections[0]!.closedPromise;
  assert.equal(run.lastSeq, 2);
  assert.equal(run.connection, "closed");
});

test("8b. abort inside the loop body ends that iterator alone: a follow() without a signal goes on", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r8b", "t", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  fake.wsUpTo = 3;
  const controller = new AbortController();
  const run = client.attach("r8b", "t");
  const following = run.follow();
  await assert.rejects(
    (async () => {
      for await (const frame of run.frames({ signal: controller.signal })) if (frame.seq === 1) controller.abort();
    })(),
    (e: unknown) => e instanceof Error && e.name === "AbortError",
  );
  await within(reached(run, 3), "seq 3");
  assert.equal(run.connection, "open");
  server.connections[0]!.send(fake.frames[3]);
  assert.equal((await within(following, "the follow's final status")).seq, 4);
  assert.equal(server.messages.filter((m) => m.action === "unsubscribe").length, 0);
});

test("8c. aborting one of several watchers ends it alone; the run unsubscribes when the last one aborts", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r8c", "t", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  fake.wsUpTo = 2; // a live run: nothing after 2 yet
  const run = client.attach("r8c", "t");
  const [a, b, c] = [new AbortController(), new AbortController(), new AbortController()];
  const [reasonA, reasonB, reasonC] = [new Error("a left"), new Error("b left"), new Error("c left")];
  const seenA: number[] = [];
  const seenB: number[] = [];
  const iterA = (async () => {
    for await (const frame of run.frames({ signal: a.signal })) seenA.push(frame.seq);
  })();
  const iterB = (async () => {
    for await (const frame of run.frames({ signal: b.signal })) seenB.push(frame.seq);
  })();
  const text = run.text({ signal: c.signal });
  await within(reached(run, 2), "seq 2");
  a.abort(reasonA);
  await assert.rejects(within(iterA, "iterator a"), (e: unknown) => e === reasonA);
  c.abort(reasonC);
  await assert.rejects(within(text, "text()"), (e: unknown) => e === reasonC);
  assert.equal(server.messages.filter((m) => m.action === "unsubscribe").length, 0, "b still watches");
  assert.equal(run.connection, "open");
  b.abort(reasonB);
  await assert.rejects(within(iterB, "iterator b"), (e: unknown) => e === reasonB);
  await server.waitFor(() => server.messages.some((m) => m.action === "unsubscribe" && m.runId === "r8c"), "unsubscribe");
  await server.connections[0]!.closedPromise;
  assert.deepEqual(seenA, [1, 2]);
  assert.deepEqual(seenB, [1, 2]);
  assert.equal(run.connection, "closed");
});

test("9. resumeKey: starts after the stored seq, stores each seq before its frame is dispatched, removes it at the end", async (t) => {
  const storage = new FakeStorage();
  storage.values.set("hatchway:job-9", "2");
  const { server, client } = await setup(t, { storage });
  server.addRun("r9", "t9", [chunk("1"), chunk("2"), chunk("3"), chunk("4"), completed()]);
  const run = client.attach("r9", "t9");
  const storedAtDispatch: (string | undefined)[] = [];
  run.on("frame", () => storedAtDispatch.push(storage.values.get("hatchway:job-9")));
  const frames = await collect(run.frames({ resumeKey: "job-9" }));
  assert.deepEqual(seqs(frames), [3, 4, 5]);
  assert.equal(server.subscribes("r9")[0]!.after, 2);
  assert.deepEqual(storedAtDispatch, ["3", "4", "5"]);
  assert.equal(storage.values.has("hatchway:job-9"), false);
  assert.deepEqual(storage.log, [
    "get hatchway:job-9",
    "set hatchway:job-9=3",
    "set hatchway:job-9=4",
    "set hatchway:job-9=5",
    "remove hatchway:job-9",
  ]);
});

test("9b. an explicit after wins over the stored seq", async (t) => {
  const storage = new FakeStorage();
  storage.values.set("hatchway:k", "3");
  const { server, client } = await setup(t, { storage });
  server.addRun("r9b", "t", [chunk("1"), chunk("2"), chunk("3"), completed()]);
  const frames = await collect(client.attach("r9b", "t").frames({ after: 1, resumeKey: "k" }));
  assert.deepEqual(seqs(frames), [2, 3, 4]);
  assert.equal(server.subscribes()[0]!.after, 1);
});

test("10. result() rejects RunFailedError on FAILED; text() is the chunks' data", async (t) => {
  const { server, client } = await setup(t);
  server.addRun("r10", "t", [
    { type: "status", status: "RUNNING", final: false },
    chunk("partial "),
    chunk("text"),
    { type: "status", status: "FAILED", final: true, error: "demo-fail failed on purpose" },
  ]);
  const run = client.attach("r10", "t");
  await assert.rejects(run.result(), (e: unknown) => {
    assert.ok(e instanceof RunFailedError);
    assert.equal(e.status, "FAILED");
    assert.equal(e.message, "demo-fail failed on purpose");
    assert.equal(e.frame.seq, 4);
    return true;
  });
  assert.equal(await run.text(), "partial text");
  // a run followed after it ended yields what it delivered, then ends
  assert.deepEqual(seqs(await collect(run.frames())), [1, 2, 3, 4]);
});

for (const status of ["CANCELLED", "TIMED_OUT"] as const) {
  test(`10b. result() rejects RunFailedError on ${status}`, async (t) => {
    const { server, client } = await setup(t);
    server.addRun("r", "t", [{ type: "status", status, final: true }]);
    await assert.rejects(client.attach("r", "t").result(), (e: unknown) => e instanceof RunFailedError && e.status === status);
  });
}

test("start() posts the run and follows it; HTTP errors become HatchwayError with the API's code", async (t) => {
  const { server, client } = await setup(t, { headers: { "X-App-Auth": "secret" } });
  const run = await client.start("demo-stream", { words: 2 }, { user: "u1" });
  assert.equal(run.runId, "run-1");
  assert.equal(run.token, "token-run-1");
  assert.equal(run.websocketUrl, server.wsUrl);
  const post = server.requests.find((r) => r.method === "POST")!;
  assert.deepEqual(JSON.parse(post.body), { workflow: "demo-stream", input: { words: 2 }, metadata: { user: "u1" } });
  assert.equal(post.headers["x-app-auth"], "secret");
  assert.equal(post.headers["content-type"], "application/json");
  assert.equal(await run.text(), "Happy families are all alike.");
  assert.deepEqual((await run.result()).output, { chunks: 2 });
  await assert.rejects(client.start("nope"), (e: unknown) => {
    assert.ok(e instanceof HatchwayError);
    assert.equal(e.code, "unknown_workflow");
    assert.equal(e.status, 404);
    assert.match(e.message, /unknown workflow nope/);
    return true;
  });
});

test("a not_found error frame fails the run; close() ends iterators quietly", async (t) => {
  const { server, client } = await setup(t);
  await assert.rejects(client.attach("missing", "x").follow(), (e: unknown) => e instanceof HatchwayError && e.code === "not_found");
  const fake = server.addRun("live", "t", [chunk("1"), chunk("2"), completed()]);
  fake.wsUpTo = 1;
  const run = client.attach("live", "t");
  run.on("frame", () => setTimeout(() => run.close(), 0));
  assert.deepEqual(seqs(await collect(run.frames())), [1]);
  await server.waitFor(() => server.messages.some((m) => m.action === "unsubscribe" && m.runId === "live"), "unsubscribe");
});

test("without a WebSocket implementation the run fails with no_websocket", async () => {
  const client = new HatchwayClient({ baseUrl: "http://127.0.0.1:9", websocketUrl: "ws://127.0.0.1:9/prod", storage: null });
  const original = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (original !== undefined) return; // Node 22+ has one: nothing to test here
  await assert.rejects(client.attach("r", "t").follow(), (e: unknown) => e instanceof HatchwayError && e.code === "no_websocket");
});

test("11. a resubscribe with a renewed token that the server dropped over the rate is sent again", async (t) => {
  const { server, client } = await setup(t, { getToken: () => "t2" });
  const fake = server.addRun("r11", "t1", [chunk("a"), chunk("b"), completed()]);
  fake.wsUpTo = 1;
  let n = 0;
  server.onSubscribe = (conn, message, run) => {
    n += 1;
    if (n === 1) {
      server.serve(conn, message, run);
      conn.send({ type: "error", code: "unauthorized", runId: "r11", message: "the run token expired" });
    } else if (n === 2) {
      conn.send({ type: "error", code: "rate_limited", message: "slow down" }); // the subscribe is dropped
    } else {
      fake.wsUpTo = Number.POSITIVE_INFINITY;
      fake.tokens.add("t2");
      server.serve(conn, message, run);
    }
  };
  const run = client.attach("r11", "t1");
  assert.equal(await within(run.text(), "the run's text"), "ab");
  assert.deepEqual(
    server.subscribes("r11").map((s) => [s.token, s.after]),
    [
      ["t1", 0],
      ["t2", 1],
      ["t2", 1],
    ],
  );
  assert.equal(server.connections.length, 1);
});

test("11b. a resubscribe after an internal error that the server dropped over the rate is sent again", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r11b", "t", [chunk("a"), chunk("b"), completed()]);
  fake.wsUpTo = 1;
  let n = 0;
  server.onSubscribe = (conn, message, run) => {
    n += 1;
    if (n === 1) {
      server.serve(conn, message, run);
      conn.send({ type: "error", code: "internal", runId: "r11b", message: "the relay hiccuped" });
    } else if (n === 2) {
      conn.send({ type: "error", code: "rate_limited", message: "slow down" });
    } else {
      fake.wsUpTo = Number.POSITIVE_INFINITY;
      server.serve(conn, message, run);
    }
  };
  const run = client.attach("r11b", "t");
  assert.equal(await within(run.text(), "the run's text"), "ab");
  assert.deepEqual(
    server.subscribes("r11b").map((s) => s.after),
    [0, 1, 1],
  );
});

test("12. result({ signal }) joining a follow already running rejects with signal.reason; the follow goes on", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r12", "t", [chunk("a"), chunk("b"), completed()]);
  fake.wsUpTo = 1;
  const run = client.attach("r12", "t");
  const following = run.follow();
  await within(reached(run, 1), "seq 1");
  const controller = new AbortController();
  const reason = new Error("gave up waiting");
  const result = run.result({ signal: controller.signal });
  const text = run.text({ signal: AbortSignal.timeout(50) });
  controller.abort(reason);
  await assert.rejects(within(result, "result() to reject"), (e: unknown) => e === reason);
  await assert.rejects(within(text, "text() to time out"), (e: unknown) => e instanceof Error && e.name === "TimeoutError");
  assert.equal(run.connection, "open");
  assert.equal(server.messages.filter((m) => m.action === "unsubscribe").length, 0);
  server.connections[0]!.send(fake.frames[1]);
  server.connections[0]!.send(fake.frames[2]);
  assert.equal((await within(following, "the follow")).status, "COMPLETED");
  assert.equal(await run.text(), "ab");
});

test("12b. frames({ after }) joining a follow already running yields only the frames after it", async (t) => {
  const { server, client } = await setup(t);
  const fake = server.addRun("r12b", "t", [chunk("1"), chunk("2"), chunk("3"), chunk("4"), completed()]);
  fake.wsUpTo = 1;
  const run = client.attach("r12b", "t");
  run.follow();
  await within(reached(run, 1), "seq 1");
  const frames = collect(run.frames({ after: 2 }), 8_000);
  for (const frame of fake.frames.slice(1)) server.connections[0]!.send(frame);
  assert.deepEqual(seqs(await frames), [3, 4, 5]);
});

test("13. attach-only without getToken: a WebSocket refusing every connect fails the run (unauthorized) after 3 fallback rounds", async (t) => {
  const { server, client } = await setup(t, {
    baseUrl: undefined,
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 1 },
  });
  server.addRun("r13", "fresh", [chunk("1"), completed()]);
  server.refuseUpgrade = () => true; // as a browser sees an expired token: the 401 is hidden
  const run = client.attach("r13", "expired");
  let fallbacks = 0;
  run.on("connection", (state) => {
    if (state === "fallback") fallbacks += 1;
  });
  await assert.rejects(within(run.follow(), "the run to fail"), (e: unknown) => {
    assert.ok(e instanceof HatchwayError);
    assert.equal(e.code, "unauthorized");
    assert.match(e.message, /WebSocket refused the connection/);
    assert.match(e.message, /expired/);
    assert.match(e.message, /getToken/);
    assert.match(e.message, /baseUrl/);
    return true;
  });
  assert.equal(fallbacks, 3);
  assert.equal(server.upgrades.length, 3);
  assert.equal(run.connection, "closed");
});

test("13b. attach-only with getToken: a getToken that throws is an error event each round, and 3 in a row fail the run", async (t) => {
  const boom = new Error("the backend is down");
  let asked = 0;
  const { server, client } = await setup(t, {
    baseUrl: undefined,
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 1 },
    getToken: () => {
      asked += 1;
      throw boom;
    },
  });
  server.addRun("r13b", "fresh", [chunk("1"), completed()]);
  server.refuseUpgrade = () => true;
  const run = client.attach("r13b", "expired");
  const errors: Error[] = [];
  run.on("error", (error) => errors.push(error));
  await assert.rejects(
    within(run.follow(), "the run to fail"),
    (e: unknown) => e instanceof HatchwayError && e.code === "unauthorized" && e.cause === boom,
  );
  assert.equal(asked, 3);
  assert.equal(errors.length, 3);
  assert.ok(errors.every((e) => e instanceof HatchwayError && e.code === "unauthorized" && e.cause === boom));
});

test("13c. attach-only with getToken: a token the socket confirmed is not renewed in the next fallback round, only in the one after", async (t) => {
  const asked: string[] = [];
  const { server, client } = await setup(t, {
    baseUrl: undefined,
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 1 },
    getToken: (runId) => {
      asked.push(runId);
      return "fresh";
    },
  });
  const fake = server.addRun("r13c", "good", [chunk("1"), chunk("2"), completed()]);
  fake.wsUpTo = 1;
  server.refuseUpgrade = (index, token) => index > 0 && token !== "fresh";
  const run = client.attach("r13c", "good");
  const askedAtFallback: number[] = [];
  run.on("connection", (state) => {
    if (state === "fallback") askedAtFallback.push(asked.length);
  });
  const frames = collect(run.frames(), 8_000);
  await within(reached(run, 1), "seq 1");
  fake.tokens.add("fresh");
  fake.wsUpTo = Number.POSITIVE_INFINITY;
  server.connections[0]!.drop(); // from now on only the fresh token connects
  assert.deepEqual(seqs(await frames), [1, 2, 3]);
  assert.deepEqual(askedAtFallback, [0, 0], "round 1 does not ask for the confirmed token; round 2 does");
  assert.deepEqual(asked, ["r13c"]);
  assert.deepEqual(
    server.upgrades.map((u) => [u.token, u.accepted]),
    [
      ["good", true],
      ["good", false],
      ["good", false],
      ["fresh", true],
    ],
  );
  assert.deepEqual(
    server.subscribes("r13c").map((s) => [s.token, s.after]),
    [
      ["good", 0],
      ["fresh", 1],
    ],
  );
});

test("14. a by-reference fetch that stalls times out (requestTimeoutMs) and is tried again", async (t) => {
  const { server, client } = await setup(t, { requestTimeoutMs: 500 });
  server.blob("c2", "BIG");
  server.blobs.get("c2")!.stall = 1; // the first fetch is never answered
  server.addRun("r14", "t", [chunk("a "), { type: "chunk", url: server.blobUrl("c2"), size: 3 }, completed()]);
  const run = client.attach("r14", "t");
  const frames = await collect(run.frames(), 8_000);
  assert.equal(textOf(frames), "a BIG");
  assert.equal(server.stalled, 1);
  assert.deepEqual(server.blobs.get("c2")!.fetches, [1, 1]);
});

test("14b. a GET /frames of the fallback that stalls times out, is an error event, and the next round tries again", async (t) => {
  const { server, client } = await setup(t, {
    requestTimeoutMs: 500,
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 1 },
  });
  server.addRun("r14b", "t", [chunk("a"), completed()]);
  server.refuseUpgrade = () => true;
  server.stallFrames = 1;
  const run = client.attach("r14b", "t");
  const errors: Error[] = [];
  run.on("error", (error) => errors.push(error));
  const frames = await collect(run.frames(), 8_000);
  assert.deepEqual(seqs(frames), [1, 2]);
  assert.equal(server.stalled, 1);
  const pages = server.requests.filter((r) => r.path.startsWith("/runs/r14b/frames"));
  assert.deepEqual(
    pages.map((r) => r.path),
    ["/runs/r14b/frames?after=0", "/runs/r14b/frames?after=0"],
  );
  assert.ok(errors.some((e) => e instanceof HatchwayError && e.code === "network_error"), errors.map(String).join("; "));
});

test("13d. with baseUrl: a getToken that throws after a 401 from /frames is an error event, and 3 in a row fail the run", async (t) => {
  const boom = new Error("the backend is down");
  const { server, client } = await setup(t, {
    random: () => 1,
    reconnect: { baseMs: 5, capMs: 20, fallbackAfter: 1 },
    getToken: () => Promise.reject(boom),
  });
  server.addRun("r13d", "fresh", [chunk("1"), completed()]);
  server.refuseUpgrade = () => true;
  const run = client.attach("r13d", "expired");
  const errors: Error[] = [];
  run.on("error", (error) => errors.push(error));
  await assert.rejects(
    within(run.follow(), "the run to fail"),
    (e: unknown) => e instanceof HatchwayError && e.code === "unauthorized" && e.cause === boom,
  );
  assert.equal(errors.length, 3);
  assert.ok(errors.every((e) => e instanceof HatchwayError && e.cause === boom));
  const pages = server.requests.filter((r) => r.path.startsWith("/runs/r13d/frames"));
  assert.deepEqual(
    pages.map((r) => r.authorization),
    ["Bearer expired", "Bearer expired", "Bearer expired"],
  );
});
