/** The WebSocket a client shares among all its runs on one websocketUrl. */

import { backoffDelay } from "./backoff.js";
import { HatchwayError } from "./errors.js";
import type {
  ConnectionInfo,
  ConnectionState,
  ErrorFrame,
  ServerFrame,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** What the socket needs of a run it carries (a Run's current session). */
export interface Subscriber {
  readonly runId: string;
  /** The run token the subscribe carries (and the connect, when this run's turn). */
  readonly token: string;
  /** The `after` of the next subscribe: the highest seq the run has taken. */
  readonly resumeAfter: number;
  /** A frame of this run: sequenced, `subscribed`, `unsubscribed`, or an `error` naming it. */
  receive(frame: ServerFrame): void;
  /** An `error` frame naming no run (too_slow, rate_limited, bad_request...). */
  connectionError(frame: ErrorFrame): void;
  state(state: ConnectionState, info: ConnectionInfo): void;
  /** Catch up over HTTP (GET /runs/{id}/frames) while the WebSocket cannot connect. */
  catchUp(): Promise<void>;
  /** The socket cannot serve this run at all (no WebSocket implementation). */
  fatal(error: Error): void;
}

export interface SocketConfig {
  WebSocket: WebSocketConstructor | undefined;
  baseMs: number;
  capMs: number;
  fallbackAfter: number;
  random: () => number;
}

const OPEN = 1;
const PING_INTERVAL_MS = 5 * 60 * 1000; // API Gateway closes a connection idle for 10 minutes
const RATE_LIMIT_RETRY_MS = 1000;

export function withToken(url: string, token: string): string {
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

export class SharedSocket {
  private ws: WebSocketLike | null = null;
  private opened = false;
  private readonly subs = new Set<Subscriber>(); // several Runs of one run each get its frames
  /** Runs with a subscribe sent on the open socket that nothing answered yet (`subscribed` or an error naming the run). */
  private readonly unanswered = new Set<string>();
  private failures = 0; // consecutive connects that never opened
  private attempt = 0; // backoff step; back to 0 once a connection opens
  private turn = 0; // whose token the next connect uses
  private timer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private rateTimer: ReturnType<typeof setTimeout> | undefined;
  private fallingBack = false;
  private current: ConnectionState = "connecting";
  private currentInfo: ConnectionInfo = {};
  private disposed = false;

  constructor(
    readonly url: string,
    private readonly config: SocketConfig,
    private readonly onDisposed: (socket: SharedSocket) => void,
  ) {}

  get isDisposed(): boolean {
    return this.disposed;
  }

  get state(): ConnectionState {
    return this.current;
  }

  add(sub: Subscriber): void {
    if (this.disposed) throw new Error("SharedSocket used after it was disposed");
    this.subs.add(sub);
    sub.state(this.current, this.currentInfo);
    if (this.ws && this.opened) this.subscribe(sub);
    else if (!this.ws && this.timer === undefined && !this.fallingBack) this.connect();
  }

  /** Subscribe again (a fresh token, a retry) with the run's current `after`. */
  resubscribe(sub: Subscriber): void {
    if (this.subs.has(sub) && this.ws && this.opened) this.subscribe(sub);
  }

  /** Forget a subscriber; `unsubscribe`: tell the server, unless another Run of that run still follows it. */
  remove(sub: Subscriber, unsubscribe: boolean): void {
    if (!this.subs.delete(sub)) return;
    if (!this.forRun(sub.runId).length) {
      this.unanswered.delete(sub.runId);
      if (unsubscribe) this.send({ action: "unsubscribe", runId: sub.runId });
    }
    if (this.subs.size === 0) this.dispose();
  }

  private forRun(runId: string): Subscriber[] {
    return [...this.subs].filter((sub) => sub.runId === runId);
  }

  /** Close the socket and forget every run (client.close()). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    this.opened = false;
    if (ws) {
      try {
        ws.close(1000, "done");
      } catch {
        // already closing
      }
    }
    this.setState("closed", {});
    this.subs.clear();
    this.onDisposed(this);
  }

  private clearTimers(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    if (this.rateTimer !== undefined) clearTimeout(this.rateTimer);
    this.timer = this.pingTimer = this.rateTimer = undefined;
  }

  private setState(state: ConnectionState, info: ConnectionInfo): void {
    this.current = state;
    this.currentInfo = info;
    for (const sub of [...this.subs]) sub.state(state, info);
  }

  private connect(): void {
    this.timer = undefined;
    if (this.disposed) return;
    const subs = [...this.subs];
    if (subs.length === 0) return this.dispose();
    const Ctor = this.config.WebSocket;
    if (!Ctor) {
      const error = new HatchwayError(
        "no_websocket",
        "no WebSocket implementation: pass one as the WebSocket option (in Node: the ws package)",
      );
      for (const sub of subs) sub.fatal(error);
      return;
    }
    const sub = subs[this.turn++ % subs.length] as Subscriber;
    if (this.current !== "reconnecting") this.setState(this.attempt === 0 ? "connecting" : "reconnecting", {});
    let ws: WebSocketLike;
    try {
      ws = new Ctor(withToken(this.url, sub.token));
    } catch {
      this.failures += 1;
      this.retry();
      return;
    }
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.opened = true;
      this.failures = 0;
      this.attempt = 0;
      this.setState("open", {});
      for (const s of [...this.subs]) this.subscribe(s);
      this.pingTimer = setInterval(() => this.send({ action: "ping" }), PING_INTERVAL_MS);
    };
    ws.onmessage = (event: { data?: unknown }) => {
      if (this.ws !== ws) return;
      this.message(event.data);
    };
    ws.onerror = () => {
      // the close that follows says what to do
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
      this.pingTimer = undefined;
      const wasOpen = this.opened;
      this.opened = false;
      this.unanswered.clear(); // a reopen subscribes every run again
      if (!wasOpen) this.failures += 1;
      this.retry();
    };
  }

  private retry(): void {
    if (this.disposed) return;
    if (this.subs.size === 0) return this.dispose();
    if (this.failures >= this.config.fallbackAfter) {
      void this.fallback();
      return;
    }
    this.wait();
  }

  private wait(): void {
    const attempt = this.attempt++;
    const delayMs = backoffDelay(attempt, this.config.baseMs, this.config.capMs, this.config.random);
    this.setState("reconnecting", { attempt, delayMs, failures: this.failures });
    this.timer = setTimeout(() => this.connect(), delayMs);
  }

  /** The WebSocket failed `fallbackAfter` times in a row: catch every run up over HTTP, then try it again. */
  private async fallback(): Promise<void> {
    this.fallingBack = true;
    this.setState("fallback", { failures: this.failures });
    await Promise.all([...this.subs].map((sub) => sub.catchUp().catch(() => undefined)));
    this.fallingBack = false;
    if (this.disposed) return;
    if (this.subs.size === 0) return this.dispose();
    this.wait();
  }

  private subscribe(sub: Subscriber): void {
    // every subscribe waits for its answer, a resubscribe too (a fresh token, after `internal`):
    // if the server drops it over the rate, the rate_limited retry sends it again
    if (this.ws && this.opened) this.unanswered.add(sub.runId);
    this.send({ action: "subscribe", runId: sub.runId, token: sub.token, after: sub.resumeAfter });
  }

  private send(message: Record<string, unknown>): void {
    const ws = this.ws;
    if (!ws || !this.opened || ws.readyState !== OPEN) return;
    try {
      ws.send(JSON.stringify(message));
    } catch {
      // the close event follows
    }
  }

  private message(data: unknown): void {
    const text = typeof data === "string" ? data : data instanceof ArrayBuffer ? new TextDecoder().decode(data) : String(data);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return; // not a frame of the protocol
    }
    if (!parsed || typeof parsed !== "object") return;
    const message = parsed as { type?: unknown; frames?: unknown };
    if (message.type === "batch" && Array.isArray(message.frames)) {
      for (const frame of message.frames) this.dispatch(frame as ServerFrame);
    } else {
      this.dispatch(parsed as ServerFrame);
    }
  }

  private dispatch(frame: ServerFrame): void {
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "pong") return;
    const runId = "runId" in frame && typeof frame.runId === "string" ? frame.runId : undefined;
    if (frame.type === "error") {
      if (frame.code === "rate_limited") this.retryUnanswered();
      const subs = runId === undefined ? [] : this.forRun(runId);
      if (subs.length) this.unanswered.delete(runId as string); // answered: the run's own handling decides
      if (subs.length) for (const sub of subs) sub.receive(frame);
      else for (const s of [...this.subs]) s.connectionError(frame);
      return;
    }
    if (runId === undefined) return;
    const subs = this.forRun(runId);
    if (frame.type === "subscribed" && subs.length) this.unanswered.delete(runId);
    for (const sub of subs) sub.receive(frame);
  }

  /** Messages over the rate are dropped unanswered: send again the subscribes nothing answered. */
  private retryUnanswered(): void {
    if (this.rateTimer !== undefined) return;
    this.rateTimer = setTimeout(() => {
      this.rateTimer = undefined;
      const runIds = new Set(this.unanswered);
      for (const sub of [...this.subs]) if (runIds.has(sub.runId)) this.subscribe(sub);
    }, RATE_LIMIT_RETRY_MS);
  }
}
