/**
 * A scripted Hatchway for the tests: a real `ws` WebSocketServer and a node:http server on
 * 127.0.0.1, port 0, speaking the shapes of docs/protocol.md.
 *
 * - WebSocket: `?token=` checked at the upgrade (refuseUpgrade can refuse any), `subscribe`
 *   answered with `subscribed` then the run's frames with seq > after (scriptable per test
 *   through onSubscribe), `unsubscribe` with `unsubscribed`, `ping` with `pong`.
 * - HTTP: POST /runs, GET /runs/{id}/frames?after&limit (Bearer run token), and by-reference
 *   payloads at /blob/{name}?v=N that answer 403 for any version but the current one. A blob's
 *   `stall` (and `stallFrames` for /frames) leaves that many requests unanswered.
 */

import { EventEmitter } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer } from "ws";

export type WireFrame = Record<string, unknown> & { type: string; runId?: string; seq?: number };

export interface FakeRun {
  runId: string;
  /** Tokens the server accepts for this run. */
  tokens: Set<string>;
  /** The run's frames as the WebSocket sends them. */
  frames: WireFrame[];
  /** Frames GET /frames answers instead, by seq (a fresh url, say). */
  httpFrames: Map<number, WireFrame>;
  /** GET /frames sees frames up to this seq only (a run still streaming). */
  httpUpTo: number;
  /** The default subscribe handler sends frames up to this seq only (a live run that stalls). */
  wsUpTo: number;
  status: string;
}

export interface Subscribe {
  action: "subscribe";
  runId: string;
  token: string;
  after?: number;
}

export class FakeConnection {
  readonly messages: Record<string, unknown>[] = [];
  closed = false;
  readonly closedPromise: Promise<void>;

  constructor(
    readonly ws: WebSocket,
    readonly token: string | null,
    readonly index: number,
  ) {
    this.closedPromise = new Promise((resolve) => ws.once("close", () => resolve()));
    ws.once("close", () => {
      this.closed = true;
    });
  }

  send(frame: unknown): void {
    this.ws.send(JSON.stringify(frame));
  }

  batch(frames: unknown[]): void {
    this.send({ type: "batch", frames });
  }

  /** Drop the connection without a close handshake (a network failure). */
  drop(): void {
    this.ws.terminate();
  }
}

export type SubscribeHandler = (conn: FakeConnection, message: Subscribe, run: FakeRun | undefined) => void;

export class FakeServer extends EventEmitter {
  readonly http: http.Server;
  readonly wss: WebSocketServer;
  readonly runs = new Map<string, FakeRun>();
  readonly connections: FakeConnection[] = [];
  /** Every upgrade attempt: its token, when (performance.now()), and whether it was accepted. */
  readonly upgrades: { token: string | null; at: number; accepted: boolean }[] = [];
  readonly requests: {
    method: string;
    path: string;
    authorization: string | undefined;
    headers: http.IncomingHttpHeaders;
    body: string;
  }[] = [];
  readonly blobs = new Map<
    string,
    { body: string; contentType: string; version: number; fetches: number[]; stall: number }
  >();
  /** The next this-many GET /runs/{id}/frames requests are never answered (a stalled request). */
  stallFrames = 0;
  /** Requests left unanswered on purpose (stall, stallFrames). */
  stalled = 0;
  /** Return true to refuse the upgrade numbered `index` (0-based) with 401. */
  refuseUpgrade: (index: number, token: string | null) => boolean = () => false;
  onSubscribe: SubscribeHandler = (conn, message, run) => this.serve(conn, message, run);
  /** The page size of GET /frames when the client gives no limit. */
  defaultLimit = 500;
  port = 0;

  constructor() {
    super();
    this.setMaxListeners(0);
    this.http = http.createServer((req, res) => void this.request(req, res));
    this.wss = new WebSocketServer({ noServer: true });
    this.http.on("upgrade", (req, socket, head) => this.upgrade(req, socket, head));
  }

  static async start(): Promise<FakeServer> {
    const server = new FakeServer();
    await new Promise<void>((resolve) => server.http.listen(0, "127.0.0.1", resolve));
    server.port = (server.http.address() as AddressInfo).port;
    return server;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/prod`;
  }

  /** A run with the given frames (runId and seq filled in: seq 1, 2, ...). */
  addRun(runId: string, token: string, frames: Omit<WireFrame, "runId" | "seq">[]): FakeRun {
    const run: FakeRun = {
      runId,
      tokens: new Set([token]),
      frames: frames.map((frame, i) => ({ runId, seq: i + 1, ...frame }) as WireFrame),
      httpFrames: new Map(),
      httpUpTo: Number.POSITIVE_INFINITY,
      wsUpTo: Number.POSITIVE_INFINITY,
      status: "RUNNING",
    };
    this.runs.set(runId, run);
    return run;
  }

  blob(name: string, body: string, contentType = "text/plain; charset=utf-8"): void {
    this.blobs.set(name, { body, contentType, version: 1, fetches: [], stall: 0 });
  }

  blobUrl(name: string, version?: number): string {
    const blob = this.blobs.get(name);
    return `${this.baseUrl}/blob/${name}?v=${version ?? blob?.version ?? 1}`;
  }

  /** Every message any connection sent, with the connection's index. */
  get messages(): (Record<string, unknown> & { conn: number })[] {
    return this.connections.flatMap((c) => c.messages.map((m) => ({ ...m, conn: c.index })));
  }

  subscribes(runId?: string): (Subscribe & { conn: number })[] {
    return this.messages.filter(
      (m) => m.action === "subscribe" && (runId === undefined || m.runId === runId),
    ) as unknown as (Subscribe & { conn: number })[];
  }

  /** Resolves once `predicate` holds (checked now and after every event of the server). */
  waitFor(predicate: () => boolean, what = "a condition", timeoutMs = 15_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!predicate()) return;
        clearTimeout(timer);
        this.off("change", check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.off("change", check);
        reject(new Error(`timed out waiting for ${what}`));
      }, timeoutMs);
      this.on("change", check);
    });
  }

  /** The default subscribe: `subscribed`, then every frame with seq > after (up to run.wsUpTo). */
  serve(conn: FakeConnection, message: Subscribe, run: FakeRun | undefined, options: { batch?: boolean } = {}): void {
    if (!run) {
      conn.send({ type: "error", code: "not_found", message: "no such run", runId: message.runId });
      return;
    }
    if (!run.tokens.has(message.token)) {
      conn.send({ type: "error", code: "unauthorized", message: "bad token", runId: run.runId });
      return;
    }
    const after = message.after ?? 0;
    conn.send({ type: "subscribed", runId: run.runId, status: run.status, lastSeq: run.frames.length });
    const frames = run.frames.filter((f) => (f.seq ?? 0) > after && (f.seq ?? 0) <= run.wsUpTo);
    if (options.batch) conn.batch(frames);
    else for (const frame of frames) conn.send(frame);
  }

  private upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => undefined); // a client that gives up mid-handshake resets the socket
    const url = new URL(req.url ?? "/", this.baseUrl);
    const token = url.searchParams.get("token");
    const index = this.upgrades.length;
    const refused = this.refuseUpgrade(index, token);
    this.upgrades.push({ token, at: performance.now(), accepted: !refused });
    if (refused) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{"message":"Unauthorized"}');
      this.emit("change");
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = new FakeConnection(ws, token, this.connections.length);
      this.connections.push(conn);
      ws.on("message", (data) => {
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(String(data)) as Record<string, unknown>;
        } catch {
          conn.send({ type: "error", code: "bad_request", message: "not JSON" });
          return;
        }
        conn.messages.push(message);
        this.emit("change");
        this.emit("message", conn, message);
        if (message.action === "subscribe") {
          const subscribe = message as unknown as Subscribe;
          this.onSubscribe(conn, subscribe, this.runs.get(subscribe.runId));
        } else if (message.action === "unsubscribe") {
          conn.send({ type: "unsubscribed", runId: message.runId });
        } else if (message.action === "ping") {
          conn.send({ type: "pong" });
        }
      });
      ws.on("close", () => this.emit("change"));
      this.emit("change");
    });
  }

  private async request(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString();
    const url = new URL(req.url ?? "/", this.baseUrl);
    this.requests.push({
      method: req.method ?? "GET",
      path: url.pathname + url.search,
      authorization: req.headers.authorization,
      headers: req.headers,
      body,
    });
    const json = (status: number, value: unknown): void => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(value));
      this.emit("change");
    };
    const error = (status: number, code: string, message: string): void => json(status, { error: { code, message } });

    const blob = /^\/blob\/([^/]+)$/.exec(url.pathname);
    if (blob && req.method === "GET") {
      const stored = this.blobs.get(blob[1] ?? "");
      if (!stored) return error(404, "not_found", "no such object");
      stored.fetches.push(Number(url.searchParams.get("v")));
      if (stored.stall > 0) {
        stored.stall -= 1; // this fetch is never answered
        this.stalled += 1;
        this.emit("change");
        return;
      }
      if (Number(url.searchParams.get("v")) !== stored.version) {
        res.writeHead(403, { "Content-Type": "application/xml" });
        res.end("<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>");
        this.emit("change");
        return;
      }
      res.writeHead(200, { "Content-Type": stored.contentType });
      res.end(stored.body);
      this.emit("change");
      return;
    }
    if (url.pathname === "/runs" && req.method === "POST") {
      let parsed: { workflow?: unknown; input?: unknown; metadata?: unknown };
      try {
        parsed = JSON.parse(body) as typeof parsed;
      } catch {
        return error(400, "bad_request", "not JSON");
      }
      if (parsed.workflow !== "demo-stream") return error(404, "unknown_workflow", `unknown workflow ${String(parsed.workflow)}`);
      const runId = `run-${this.runs.size + 1}`;
      const token = `token-${runId}`;
      this.addRun(runId, token, [
        { type: "status", status: "RUNNING", final: false },
        { type: "chunk", data: "Happy families " },
        { type: "chunk", data: "are all alike." },
        { type: "status", status: "COMPLETED", final: true, output: { chunks: 2 } },
      ]);
      return json(201, {
        runId,
        workflow: "demo-stream",
        status: "QUEUED",
        token,
        expiresAt: "2099-01-01T00:00:00Z",
        websocketUrl: this.wsUrl,
      });
    }
    const frames = /^\/runs\/([^/]+)\/frames$/.exec(url.pathname);
    if (frames && req.method === "GET") {
      if (this.stallFrames > 0) {
        this.stallFrames -= 1; // this request is never answered
        this.stalled += 1;
        this.emit("change");
        return;
      }
      const run = this.runs.get(decodeURIComponent(frames[1] ?? ""));
      const auth = req.headers.authorization ?? "";
      if (!run) return error(404, "not_found", "no such run");
      if (!auth.startsWith("Bearer ") || !run.tokens.has(auth.slice(7))) return error(401, "unauthorized", "bad token");
      const after = Number(url.searchParams.get("after") ?? "0");
      const limit = Number(url.searchParams.get("limit") ?? String(this.defaultLimit));
      const page = run.frames
        .filter((f) => (f.seq ?? 0) > after && (f.seq ?? 0) <= run.httpUpTo)
        .slice(0, limit)
        .map((f) => run.httpFrames.get(f.seq ?? 0) ?? f);
      const last = page[page.length - 1];
      return json(200, {
        frames: page,
        next: last ? last.seq : after,
        final: page.some((f) => f.type === "status" && f.final === true),
      });
    }
    return error(404, "not_found", "unknown path");
  }

  async close(): Promise<void> {
    for (const conn of this.connections) conn.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }
}

/** A storage that records what the client did with it. */
export class FakeStorage {
  readonly values = new Map<string, string>();
  readonly log: string[] = [];
  getItem(key: string): string | null {
    this.log.push(`get ${key}`);
    return this.values.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.log.push(`set ${key}=${value}`);
    this.values.set(key, value);
  }
  removeItem(key: string): void {
    this.log.push(`remove ${key}`);
    this.values.delete(key);
  }
}

/** Resolves with the first value `register` hands to its callback. */
export function once<T>(register: (callback: (value: T) => void) => void): Promise<T> {
  return new Promise((resolve) => register(resolve));
}

export { WebSocket };
