/** One run followed over the shared socket (or over HTTP while the socket cannot connect). */

import { backoffDelay } from "./backoff.js";
import type { SharedSocket, Subscriber } from "./connection.js";
import { HatchwayError, RunFailedError, abortError, errorFromResponse } from "./errors.js";
import type {
  ChunkFrame,
  ConnectionInfo,
  ConnectionState,
  ErrorFrame,
  FollowOptions,
  Frame,
  RunEventName,
  RunEvents,
  ServerFrame,
  StatusFrame,
  StorageLike,
} from "./types.js";

/** What a Run needs of its client. */
export interface RunContext {
  baseUrl: string | undefined;
  fetch: typeof fetch;
  getToken: ((runId: string) => string | Promise<string>) | undefined;
  fetchReferences: boolean;
  /** How long one HTTP request (a by-reference fetch, a GET /frames) may take, ms. */
  requestTimeoutMs: number;
  storage: StorageLike | null;
  random: () => number;
  baseMs: number;
  capMs: number;
  socketFor(websocketUrl: string): SharedSocket;
  track(run: Run): void;
  untrack(run: Run): void;
}

export interface RunInit {
  runId: string;
  token: string;
  websocketUrl: string;
  workflow?: string;
  status?: string;
  expiresAt?: string;
}

interface Session {
  readonly promise: Promise<StatusFrame>;
  readonly resolve: (frame: StatusFrame) => void;
  readonly reject: (error: unknown) => void;
  readonly storageKey: string | undefined;
  /** What watches the run through this session: iterators, follow()/text()/result() calls. */
  readonly watchers: Set<object>;
  /** Aborted when the session ends: its HTTP requests stop. */
  readonly controller: AbortController;
  socket: SharedSocket | null;
  subscriber: Subscriber | null;
}

const FAILED = new Set(["FAILED", "CANCELLED", "TIMED_OUT"]);
const FATAL_CODES = new Set(["not_found", "forbidden", "bad_request", "too_large"]);
const REFERENCE_TRIES = 4;
const MAX_UNAUTHORIZED_STREAK = 3;
const PAGES_PER_CATCH_UP = 10_000;
/** Without baseUrl and getToken: fallback rounds (the WebSocket refusing every connect) before the run fails. */
const MAX_BLIND_ROUNDS = 3;
/** getToken failures in a row (in the fallback) before the run fails. */
const MAX_TOKEN_FAILURES = 3;

/** A queue one frames() iterator reads. */
class FrameQueue {
  private readonly buffer: Frame[] = [];

  /** `after`: the iterator's own `after`; frames up to it are not its to yield. */
  constructor(private readonly after: number | undefined) {}

  private ended = false;
  private failed = false;
  private error: unknown;
  private waiter: { resolve: (r: IteratorResult<Frame>) => void; reject: (e: unknown) => void } | null = null;

  push(frame: Frame): void {
    if (this.ended || this.failed) return;
    if (this.after !== undefined && frame.seq <= this.after) return;
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter.resolve({ value: frame, done: false });
    } else this.buffer.push(frame);
  }

  end(): void {
    this.ended = true;
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter.resolve({ value: undefined, done: true });
    }
  }

  /** `drop`: throw at once (abort) rather than after what is buffered. */
  fail(error: unknown, drop: boolean): void {
    if (this.ended || this.failed) return;
    this.failed = true;
    this.error = error;
    if (drop) this.buffer.length = 0;
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter.reject(error);
    }
  }

  next(): Promise<IteratorResult<Frame>> {
    const frame = this.buffer.shift();
    if (frame !== undefined) return Promise.resolve({ value: frame, done: false });
    if (this.failed) return Promise.reject(this.error);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }
}

type Handler = (...args: never[]) => void;

export class Run {
  readonly runId: string;
  /** The run token; replaced by what getToken returns when the server refuses the old one. */
  token: string;
  readonly websocketUrl: string;
  /** From start(): the workflow, the status and the token's expiry POST /runs answered. */
  readonly workflow: string | undefined;
  readonly initialStatus: string | undefined;
  readonly expiresAt: string | undefined;

  private readonly context: RunContext;
  private lastDelivered = 0;
  private accepted = 0; // the highest seq taken into the pipeline: the next subscribe's `after`
  private readonly history: Frame[] = [];
  private finalFrame: StatusFrame | null = null;
  private session: Session | null = null;
  private readonly pending: Frame[] = [];
  private pumping = false;
  private unauthorizedStreak = 0;
  /** A `subscribed` answered a subscribe carrying the current token. */
  private tokenConfirmed = false;
  /** Fallback rounds with no HTTP API to catch up from, since the socket last served this run. */
  private blindRounds = 0;
  private tokenFailures = 0;
  private connectionState: ConnectionState = "closed";
  private readonly listeners = new Map<RunEventName, Set<Handler>>();
  private readonly iterators = new Set<FrameQueue>();

  /** @internal Use HatchwayClient.start() or attach(). */
  constructor(context: RunContext, init: RunInit) {
    this.context = context;
    this.runId = init.runId;
    this.token = init.token;
    this.websocketUrl = init.websocketUrl;
    this.workflow = init.workflow;
    this.initialStatus = init.status;
    this.expiresAt = init.expiresAt;
  }

  /** The highest seq delivered (to handlers and iterators). */
  get lastSeq(): number {
    return this.lastDelivered;
  }

  /** The connection this run is followed on, as last reported ("closed" when not following). */
  get connection(): ConnectionState {
    return this.connectionState;
  }

  /** The final status frame once it has been delivered, else null. */
  get final(): StatusFrame | null {
    return this.finalFrame;
  }

  /** The frames delivered so far, in seq order (a copy). */
  delivered(): Frame[] {
    return this.history.slice();
  }

  on<E extends RunEventName>(event: E, handler: RunEvents[E]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    const h = handler as unknown as Handler;
    set.add(h);
    return () => {
      set.delete(h);
    };
  }

  private emit<E extends RunEventName>(event: E, ...args: Parameters<RunEvents[E]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as unknown as (...a: Parameters<RunEvents[E]>) => void)(...args);
      } catch (error) {
        reportHandlerError(error);
      }
    }
  }

  /**
   * Follow the run (for the event handlers alone, or under frames(), text(), result()).
   * Resolves with the final status frame; rejects with a HatchwayError when the run cannot
   * be followed, with signal.reason on abort, or with an AbortError after close().
   *
   * Calls share one follow of the run. A call with a `signal` watches until it aborts: its
   * promise rejects with signal.reason, and the run unsubscribes only if nothing else (an
   * iterator, another call) still watches it. A call without a signal watches to the end.
   * `after` and `resumeKey` take effect when the call starts the follow.
   */
  follow(options: FollowOptions = {}): Promise<StatusFrame> {
    if (this.finalFrame) return Promise.resolve(this.finalFrame);
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const session = this.session ?? this.start(options);
    const watcher = {};
    session.watchers.add(watcher);
    if (!signal) return session.promise;
    const view = new Promise<StatusFrame>((resolve, reject) => {
      const onAbort = (): void => {
        reject(signal.reason);
        this.release(session, watcher, signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      session.promise.then(
        (frame) => {
          signal.removeEventListener("abort", onAbort);
          resolve(frame);
        },
        (error: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        },
      );
    });
    view.catch(() => undefined); // the caller may not await it; its rejection is not unhandled
    return view;
  }

  /** A new session: subscribe on the shared socket from `after` (or the stored seq). */
  private start(options: FollowOptions): Session {
    const storageKey = options.resumeKey === undefined ? undefined : `hatchway:${options.resumeKey}`;
    let after = options.after;
    if (after === undefined && storageKey !== undefined) after = this.readStored(storageKey);
    if (after !== undefined && this.history.length === 0 && Number.isFinite(after) && after > 0) {
      this.accepted = this.lastDelivered = Math.floor(after);
    }
    let resolve!: (frame: StatusFrame) => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<StatusFrame>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // the caller may not await it; its rejection is not unhandled
    const session: Session = {
      promise,
      resolve,
      reject,
      storageKey,
      watchers: new Set(),
      controller: new AbortController(),
      socket: null,
      subscriber: null,
    };
    this.session = session;
    this.unauthorizedStreak = 0;
    this.blindRounds = 0;
    this.tokenFailures = 0;
    this.context.track(this);
    const subscriber = this.subscriber(session);
    const socket = this.context.socketFor(this.websocketUrl);
    session.socket = socket;
    session.subscriber = subscriber;
    socket.add(subscriber);
    return session;
  }

  /** A watcher is done (aborted, or its loop left): the last one out stops the follow (unsubscribes). */
  private release(session: Session, watcher: object, reason: unknown): void {
    if (!session.watchers.delete(watcher)) return;
    if (this.session !== session || session.watchers.size > 0) return;
    this.teardown(session, true);
    for (const queue of [...this.iterators]) queue.fail(reason, true);
    this.iterators.clear();
    session.reject(reason);
  }

  /**
   * Each sequenced frame (chunk, file, status, gap) exactly once, in seq order; ends after the
   * final status. Frames this Run already delivered are yielded first (those after `after`).
   * Abort: this iterator throws signal.reason; the run unsubscribes once nothing else watches it.
   */
  async *frames(options: FollowOptions = {}): AsyncGenerator<Frame, void, undefined> {
    const { signal } = options;
    if (signal?.aborted) throw signal.reason;
    const queue = new FrameQueue(options.after);
    for (const frame of this.history) queue.push(frame);
    let session: Session | null = null;
    let onAbort: (() => void) | undefined;
    if (this.finalFrame) queue.end();
    else {
      this.iterators.add(queue); // before the follow starts: a failure at once reaches it
      session = this.session ?? this.start(options);
      session.watchers.add(queue);
      if (signal) {
        const watched = session;
        onAbort = () => {
          queue.fail(signal.reason, true);
          this.iterators.delete(queue);
          this.release(watched, queue, signal.reason);
        };
        signal.addEventListener("abort", onAbort, { once: true });
      }
    }
    try {
      for (;;) {
        const result = await queue.next();
        if (result.done) return;
        yield result.value;
      }
    } finally {
      this.iterators.delete(queue);
      if (signal && onAbort) signal.removeEventListener("abort", onAbort);
      // a loop left early (break) stops the follow, unless something else still watches the run
      if (session) this.release(session, queue, abortError(`stopped following run ${this.runId}`));
    }
  }

  /** The whole streamed text: the chunks' data concatenated in seq order, once the run is final. */
  async text(options: FollowOptions = {}): Promise<string> {
    await this.follow(options);
    let text = "";
    for (const frame of this.history) if (frame.type === "chunk") text += frame.data ?? "";
    return text;
  }

  /** The final status frame; rejects RunFailedError when it is FAILED, CANCELLED or TIMED_OUT. */
  async result(options: FollowOptions = {}): Promise<StatusFrame> {
    const frame = await this.follow(options);
    if (FAILED.has(frame.status)) throw new RunFailedError(frame);
    return frame;
  }

  /** The same frame with a fresh url (GET /runs/{id}/frames?after=seq-1&limit=1). */
  async refresh<F extends Frame>(frame: F): Promise<F> {
    return this.fresh(frame, undefined);
  }

  private async fresh<F extends Frame>(frame: F, session: Session | undefined): Promise<F> {
    const body = await this.getJson(`frames?after=${Math.max(0, frame.seq - 1)}&limit=1`, session);
    const frames = Array.isArray((body as { frames?: unknown }).frames) ? (body as { frames: Frame[] }).frames : [];
    const fresh = frames.find((f) => f && f.seq === frame.seq);
    if (!fresh) {
      throw new HatchwayError("not_found", `frame ${frame.seq} of run ${this.runId} is no longer retained`, {
        runId: this.runId,
      });
    }
    return fresh as F;
  }

  /** Stop following (unsubscribe). frames() iterators end; a pending follow() rejects with an AbortError. */
  close(): void {
    const session = this.session;
    if (!session) return;
    this.teardown(session, true);
    for (const queue of [...this.iterators]) queue.end();
    this.iterators.clear();
    session.reject(abortError(`stopped following run ${this.runId}`));
  }

  private fail(session: Session, error: Error, unsubscribe: boolean): void {
    if (this.session !== session) return;
    this.teardown(session, unsubscribe);
    this.emit("error", error);
    for (const queue of [...this.iterators]) queue.fail(error, false);
    this.iterators.clear();
    session.reject(error);
  }

  private teardown(session: Session, unsubscribe: boolean): void {
    this.session = null;
    this.pending.length = 0;
    this.pumping = false;
    this.accepted = this.lastDelivered;
    session.controller.abort(abortError(`stopped following run ${this.runId}`));
    if (session.subscriber) session.socket?.remove(session.subscriber, unsubscribe);
    this.context.untrack(this);
    this.setConnection("closed", {});
  }

  private setConnection(state: ConnectionState, info: ConnectionInfo): void {
    if (state === this.connectionState && Object.keys(info).length === 0) return;
    this.connectionState = state;
    this.emit("connection", state, info);
  }

  private subscriber(session: Session): Subscriber {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const run = this;
    return {
      runId: this.runId,
      get token() {
        return run.token;
      },
      get resumeAfter() {
        return run.accepted;
      },
      receive: (frame) => {
        if (this.session === session) this.receive(session, frame);
      },
      connectionError: (frame) => {
        if (this.session === session) this.emit("error", new HatchwayError(frame.code, frame.message));
      },
      state: (state, info) => {
        if (this.session === session) this.setConnection(state, info);
      },
      catchUp: () => this.catchUp(session),
      fatal: (error) => this.fail(session, error, false),
    };
  }

  private receive(session: Session, frame: ServerFrame): void {
    switch (frame.type) {
      case "chunk":
      case "file":
      case "status":
      case "gap":
        this.enqueue(session, frame);
        return;
      case "error":
        this.errorFrame(session, frame);
        return;
      case "subscribed":
        // the socket serves this run with its token: the fallback need not doubt it
        this.tokenConfirmed = true;
        this.blindRounds = 0;
        return;
      default:
        return; // unsubscribed
    }
  }

  private errorFrame(session: Session, frame: ErrorFrame): void {
    const error = new HatchwayError(frame.code, frame.message, { runId: this.runId });
    if (frame.code === "unauthorized") {
      void this.renewToken(session, error);
    } else if (FATAL_CODES.has(frame.code)) {
      this.fail(session, error, false);
    } else {
      this.emit("error", error);
      if (frame.code === "internal") {
        const delay = backoffDelay(1, this.context.baseMs, this.context.capMs, this.context.random);
        setTimeout(() => {
          if (this.session === session && session.subscriber) session.socket?.resubscribe(session.subscriber);
        }, delay);
      }
    }
  }

  /** The server refused the token (it expired mid-stream): get a fresh one, subscribe again with `after`. */
  private async renewToken(session: Session, error: HatchwayError): Promise<void> {
    const getToken = this.context.getToken;
    if (!getToken || ++this.unauthorizedStreak > MAX_UNAUTHORIZED_STREAK) {
      this.fail(session, error, false);
      return;
    }
    this.emit("error", error);
    try {
      const token = await getToken(this.runId);
      if (this.session !== session) return;
      this.useToken(token);
      if (session.subscriber) session.socket?.resubscribe(session.subscriber);
    } catch (cause) {
      this.fail(session, asError(cause), false);
    }
  }

  private enqueue(session: Session, frame: Frame): void {
    if (typeof frame.seq !== "number" || frame.seq <= this.accepted) return; // a re-sent frame
    this.accepted = frame.seq;
    this.pending.push(frame);
    if (!this.pumping) this.pump(session);
  }

  /** Deliver what is pending, in order; a by-reference frame holds the ones after it until it is fetched. */
  private pump(session: Session): void {
    this.pumping = true;
    while (this.session === session) {
      const frame = this.pending[0];
      if (frame === undefined) break;
      if (this.needsFetch(frame)) {
        void this.fetchThenPump(session, frame);
        return;
      }
      this.pending.shift();
      this.deliver(session, frame);
    }
    if (this.session === session) this.pumping = false;
  }

  private async fetchThenPump(session: Session, frame: Frame): Promise<void> {
    let full: Frame;
    try {
      full = await this.resolveReference(session, frame);
    } catch (error) {
      this.fail(session, asError(error), true);
      return;
    }
    if (this.session !== session) return;
    this.pending.shift();
    this.deliver(session, full);
    this.pump(session);
  }

  private needsFetch(frame: Frame): boolean {
    if (frame.type === "chunk") return this.context.fetchReferences && !!frame.url && frame.data === undefined;
    return frame.type === "status" && !!frame.url;
  }

  /** Fetch a chunk's data or a status's full frame; an expired url (403...) is refreshed and fetched again. */
  private async resolveReference(session: Session, frame: Frame): Promise<Frame> {
    let current = frame as ChunkFrame | StatusFrame;
    let lastError: unknown;
    for (let attempt = 0; attempt < REFERENCE_TRIES; attempt++) {
      if (this.session !== session) return frame;
      if (attempt > 1) await sleep(backoffDelay(attempt - 2, this.context.baseMs, this.context.capMs, this.context.random));
      if (attempt > 0) {
        try {
          current = (await this.fresh(frame, session)) as ChunkFrame | StatusFrame;
        } catch (error) {
          if (error instanceof HatchwayError && FATAL_CODES.has(error.code)) throw error;
          lastError = error;
          continue;
        }
      }
      const url = current.url;
      if (!url) return current; // the refreshed frame came inline
      try {
        const response = await this.context.fetch(url, { signal: this.requestSignal(session) });
        if (response.ok) {
          if (current.type === "chunk") {
            return { ...current, data: await response.text() };
          }
          const full = (await response.json()) as StatusFrame;
          return { ...full, type: "status", runId: this.runId, seq: frame.seq };
        }
        lastError = new HatchwayError(
          response.status === 403 ? "forbidden" : "reference_unavailable",
          `fetching the ${frame.type} frame ${frame.seq} by reference: HTTP ${response.status}`,
          { status: response.status, runId: this.runId },
        );
      } catch (error) {
        lastError = error;
      }
    }
    throw new HatchwayError(
      "reference_unavailable",
      `the ${frame.type} frame ${frame.seq} of run ${this.runId} could not be fetched by reference`,
      { runId: this.runId, cause: lastError },
    );
  }

  private deliver(session: Session, frame: Frame): void {
    this.lastDelivered = frame.seq;
    this.unauthorizedStreak = 0;
    if (session.storageKey !== undefined) this.store(session.storageKey, String(frame.seq));
    this.history.push(frame);
    const isFinal = frame.type === "status" && frame.final;
    if (isFinal) this.finalFrame = frame;
    this.emit("frame", frame);
    switch (frame.type) {
      case "chunk":
        this.emit("chunk", frame);
        break;
      case "file":
        this.emit("file", frame);
        break;
      case "status":
        this.emit("status", frame);
        break;
      case "gap":
        this.emit("gap", frame);
        break;
    }
    for (const queue of [...this.iterators]) queue.push(frame);
    if (isFinal && session.storageKey !== undefined) this.store(session.storageKey, null);
    if (isFinal && this.session === session) {
      this.teardown(session, false);
      for (const queue of [...this.iterators]) queue.end();
      this.iterators.clear();
      session.resolve(frame as StatusFrame);
    }
  }

  /** HTTP fallback: GET /runs/{id}/frames?after=last, following `next` until `final` or an empty page. */
  private async catchUp(session: Session): Promise<void> {
    if (!this.context.baseUrl) {
      await this.blindRound(session);
      return;
    }
    let after = this.accepted;
    for (let page = 0; page < PAGES_PER_CATCH_UP; page++) {
      if (this.session !== session) return;
      let body: { frames?: unknown; next?: unknown; final?: unknown };
      try {
        body = (await this.getJson(`frames?after=${after}`, session)) as typeof body;
      } catch (error) {
        if (this.session !== session) return;
        if (error instanceof TokenFailure) {
          this.tokenFailed(session, error);
          return;
        }
        if (error instanceof HatchwayError && (FATAL_CODES.has(error.code) || error.code === "unauthorized")) {
          this.fail(session, error, false);
          return;
        }
        this.emit("error", asError(error)); // a network error, a timeout: the next round tries again
        return;
      }
      if (this.session !== session) return;
      const frames = Array.isArray(body.frames) ? (body.frames as Frame[]) : [];
      for (const frame of frames) {
        if (this.session !== session) return;
        if (frame && typeof frame === "object") this.enqueue(session, { ...frame, runId: this.runId });
      }
      const last = frames[frames.length - 1];
      if (body.final === true || last === undefined) return;
      const next = typeof body.next === "number" ? body.next : last.seq;
      if (next <= after) return;
      after = next;
    }
  }

  /**
   * A fallback round with no HTTP API to catch up from. The refused connects may be the
   * token's ($connect checks it, and browsers hide the 401): ask getToken (once a round, and
   * not for a token the socket just confirmed); without getToken, fail after a few rounds.
   */
  private async blindRound(session: Session): Promise<void> {
    const getToken = this.context.getToken;
    this.blindRounds += 1;
    if (!getToken) {
      if (this.blindRounds >= MAX_BLIND_ROUNDS) {
        const error = new HatchwayError(
          "unauthorized",
          `the WebSocket refused the connection ${this.blindRounds} fallback rounds in a row, likely because ` +
            `run ${this.runId}'s token expired; give the client getToken (or baseUrl) to let it recover`,
          { runId: this.runId },
        );
        this.fail(session, error, false);
      }
      return;
    }
    if (this.tokenConfirmed) {
      this.tokenConfirmed = false; // it served the run on the last connection: doubt it next round
      return;
    }
    let token: string;
    try {
      token = await getToken(this.runId);
    } catch (cause) {
      if (this.session === session) this.tokenFailed(session, new TokenFailure(this.runId, cause));
      return;
    }
    if (this.session !== session) return;
    this.tokenFailures = 0;
    this.useToken(token);
  }

  /** getToken threw in the fallback: an error event, and the run fails after a few in a row. */
  private tokenFailed(session: Session, error: TokenFailure): void {
    if (++this.tokenFailures >= MAX_TOKEN_FAILURES) this.fail(session, error, false);
    else this.emit("error", error);
  }

  private useToken(token: string): void {
    if (token !== this.token) this.tokenConfirmed = false;
    this.token = token;
  }

  /** A request's signal: it times out, and it aborts when the session ends. */
  private requestSignal(session: Session | undefined): AbortSignal {
    const timeout = AbortSignal.timeout(this.context.requestTimeoutMs);
    return session ? anySignal([timeout, session.controller.signal]) : timeout;
  }

  /** GET {baseUrl}/runs/{id}/{path} with the run token; one 401 asks getToken and tries again. */
  private async getJson(path: string, session: Session | undefined): Promise<unknown> {
    const base = this.context.baseUrl;
    if (!base) throw new HatchwayError("no_base_url", "the client has no baseUrl for the HTTP API", { runId: this.runId });
    const url = `${base.replace(/\/+$/, "")}/runs/${encodeURIComponent(this.runId)}/${path}`;
    let response = await this.httpGet(url, session);
    const getToken = this.context.getToken;
    if (response.status === 401 && getToken) {
      let token: string;
      try {
        token = await getToken(this.runId);
      } catch (cause) {
        throw new TokenFailure(this.runId, cause);
      }
      this.tokenFailures = 0;
      this.useToken(token);
      response = await this.httpGet(url, session);
    }
    if (!response.ok) throw await errorFromResponse(response, this.runId);
    try {
      return await response.json();
    } catch (cause) {
      if (!(cause instanceof Error) || (cause.name !== "AbortError" && cause.name !== "TimeoutError")) throw cause;
      throw new HatchwayError("network_error", `GET ${url}: the body could not be read: ${String(cause)}`, {
        runId: this.runId,
        cause,
      });
    }
  }

  private async httpGet(url: string, session: Session | undefined): Promise<Response> {
    try {
      return await this.context.fetch(url, {
        headers: { Authorization: `Bearer ${this.token}` },
        signal: this.requestSignal(session),
      });
    } catch (cause) {
      throw new HatchwayError("network_error", `GET ${url} failed: ${String(cause)}`, { runId: this.runId, cause });
    }
  }

  private readStored(key: string): number | undefined {
    try {
      const value = this.context.storage?.getItem(key);
      if (value === null || value === undefined) return undefined;
      const seq = Number(value);
      return Number.isFinite(seq) && seq >= 0 ? seq : undefined;
    } catch {
      return undefined;
    }
  }

  private store(key: string, value: string | null): void {
    try {
      if (value === null) this.context.storage?.removeItem(key);
      else this.context.storage?.setItem(key, value);
    } catch {
      // storage full or refused: resuming is best effort
    }
  }
}

/** getToken threw (or rejected): code `unauthorized`, `cause` what it threw. */
class TokenFailure extends HatchwayError {
  constructor(runId: string, cause: unknown) {
    super("unauthorized", `getToken(${runId}) failed: ${String(cause)}`, { runId, cause });
  }
}

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

/** AbortSignal.any, or its equivalent where the platform lacks it. */
function anySignal(signals: AbortSignal[]): AbortSignal {
  const any = (AbortSignal as { any?: (signals: AbortSignal[]) => AbortSignal }).any;
  if (typeof any === "function") return any.call(AbortSignal, signals);
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function reportHandlerError(error: unknown): void {
  const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
  if (typeof report === "function") report(error);
  else console.error("hatchway-client: an event handler threw", error);
}
