/** Frames and option types of the Hatchway wire protocol, version 1 (docs/protocol.md). */

export type RunStatus = "QUEUED" | "RUNNING" | "COMPLETED" | "FAILED" | "CANCELLED" | "TIMED_OUT";

/** A piece of the text a task streamed; `data` is filled in for a by-reference chunk (`url`) once fetched. */
export interface ChunkFrame {
  type: "chunk";
  runId: string;
  seq: number;
  data?: string;
  url?: string;
  size?: number;
  expiresAt?: string;
}

/** A file a task put: always by reference; the client passes it on as it came. */
export interface FileFrame {
  type: "file";
  runId: string;
  seq: number;
  name: string;
  contentType: string;
  size: number;
  sha256: string;
  url: string;
  expiresAt: string;
}

export interface StatusFrame {
  type: "status";
  runId: string;
  seq: number;
  status: RunStatus;
  final: boolean;
  output?: unknown;
  error?: string;
  /** Only on a status sent by reference; the client replaces such a frame by the full one it fetched. */
  url?: string;
  size?: number;
  expiresAt?: string;
}

/** Frames were lost upstream (or from the log: `skipped`). Always surfaced, never hidden. */
export interface GapFrame {
  type: "gap";
  runId: string;
  seq: number;
  reason: string;
  skipped?: [number, number];
}

/** The frames of a run's sequence. */
export type Frame = ChunkFrame | FileFrame | StatusFrame | GapFrame;
export type SequencedFrame = Frame;

export interface SubscribedFrame {
  type: "subscribed";
  runId: string;
  status: string;
  lastSeq: number;
}
export interface UnsubscribedFrame {
  type: "unsubscribed";
  runId: string;
}
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  runId?: string;
}
export interface PongFrame {
  type: "pong";
}
export interface BatchMessage {
  type: "batch";
  frames: ServerFrame[];
}
export type ControlFrame = SubscribedFrame | UnsubscribedFrame | ErrorFrame | PongFrame;
export type ServerFrame = Frame | ControlFrame;

/** The connection a run is followed on, as its "connection" event reports it. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "fallback" | "closed";

/** Details given with a "connection" event (second argument; `delayMs` with "reconnecting"). */
export interface ConnectionInfo {
  /** The backoff attempt the delay was computed for (0-based), with "reconnecting". */
  attempt?: number;
  /** How long the client waits before it connects again, with "reconnecting". */
  delayMs?: number;
  /** Consecutive connects that failed (no open), with "reconnecting" and "fallback". */
  failures?: number;
}

/** What the client needs of a WebSocket: the browser's, or `ws` in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((event: any) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The storage resumeKey uses (sessionStorage, localStorage, or your own). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ReconnectOptions {
  /** The first backoff step, ms (default 250). */
  baseMs?: number;
  /** The largest backoff step, ms (default 10000). */
  capMs?: number;
  /** Consecutive failed connects after which the client catches up over HTTP (default 3). */
  fallbackAfter?: number;
}

export interface HatchwayClientOptions {
  /** The HTTP API (POST /runs, GET /runs/{id}/frames), e.g. http://127.0.0.1:8000. */
  baseUrl?: string;
  /** Used by attach() when not given there. */
  websocketUrl?: string;
  fetch?: typeof fetch;
  WebSocket?: WebSocketConstructor;
  /** A fresh run token (the server said unauthorized, or the connection was refused). */
  getToken?: (runId: string) => string | Promise<string>;
  /** Default true: chunks with `url` are fetched and `data` filled in. */
  fetchReferences?: boolean;
  /** How long one GET the client makes itself (a by-reference payload, /frames) may take, ms (default 30000); a timed-out one is retried. */
  requestTimeoutMs?: number;
  reconnect?: ReconnectOptions;
  /** For tests: the jitter source (default Math.random). */
  random?: () => number;
  /** resumeKey storage; default globalThis.sessionStorage when present; null: none. */
  storage?: StorageLike | null;
  /** Extra headers on POST /runs (e.g. your own auth). */
  headers?: Record<string, string>;
}

export interface FollowOptions {
  /** The last seq already processed; default: the stored seq for resumeKey if any, else 0. */
  after?: number;
  /** Ends this iterator or call alone (it throws/rejects signal.reason); the run unsubscribes once nothing else watches it. */
  signal?: AbortSignal;
  /** Store the last seq under `hatchway:<resumeKey>` while following; removed after the final status. */
  resumeKey?: string;
}

export interface RunEvents {
  chunk: (frame: ChunkFrame) => void;
  file: (frame: FileFrame) => void;
  status: (frame: StatusFrame) => void;
  gap: (frame: GapFrame) => void;
  frame: (frame: Frame) => void;
  connection: (state: ConnectionState, info: ConnectionInfo) => void;
  error: (error: Error) => void;
}
export type RunEventName = keyof RunEvents;
