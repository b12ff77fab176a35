import { SharedSocket } from "./connection.js";
import { HatchwayError, errorFromResponse } from "./errors.js";
import { Run, type RunContext } from "./run.js";
import type { HatchwayClientOptions, StorageLike, WebSocketConstructor } from "./types.js";

const DEFAULT_BASE_MS = 250;
const DEFAULT_CAP_MS = 10_000;
const DEFAULT_FALLBACK_AFTER = 3;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

interface StartResponse {
  runId: string;
  workflow?: string;
  status?: string;
  token: string;
  expiresAt?: string;
  websocketUrl?: string;
}

function defaultStorage(): StorageLike | null {
  try {
    const storage = (globalThis as { sessionStorage?: StorageLike }).sessionStorage;
    return storage ?? null;
  } catch {
    return null; // access refused (privacy settings, sandboxed frames)
  }
}

/**
 * Starts runs (POST /runs) and follows them: one WebSocket per websocketUrl, shared by
 * all the client's runs.
 */
export class HatchwayClient {
  readonly baseUrl: string | undefined;
  readonly websocketUrl: string | undefined;
  private readonly options: HatchwayClientOptions;
  private readonly fetchImpl: typeof fetch;
  private readonly sockets = new Map<string, SharedSocket>();
  private readonly following = new Set<Run>();
  private readonly context: RunContext;

  constructor(options: HatchwayClientOptions = {}) {
    this.options = options;
    this.baseUrl = options.baseUrl?.replace(/\/+$/, "");
    this.websocketUrl = options.websocketUrl;
    const fetchImpl = options.fetch ?? globalThis.fetch;
    this.fetchImpl = (input, init) => {
      if (typeof fetchImpl !== "function") {
        return Promise.reject(new HatchwayError("no_fetch", "no fetch implementation: pass one as the fetch option"));
      }
      return fetchImpl(input, init);
    };
    const reconnect = options.reconnect ?? {};
    const random = options.random ?? Math.random;
    const baseMs = reconnect.baseMs ?? DEFAULT_BASE_MS;
    const capMs = reconnect.capMs ?? DEFAULT_CAP_MS;
    const fallbackAfter = Math.max(1, reconnect.fallbackAfter ?? DEFAULT_FALLBACK_AFTER);
    const WebSocketImpl =
      options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ?? undefined;
    this.context = {
      baseUrl: this.baseUrl,
      fetch: this.fetchImpl,
      getToken: options.getToken,
      fetchReferences: options.fetchReferences ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
      storage: options.storage === undefined ? defaultStorage() : options.storage,
      random,
      baseMs,
      capMs,
      socketFor: (url) => {
        let socket = this.sockets.get(url);
        if (!socket || socket.isDisposed) {
          socket = new SharedSocket(url, { WebSocket: WebSocketImpl, baseMs, capMs, fallbackAfter, random }, (s) => {
            if (this.sockets.get(url) === s) this.sockets.delete(url);
          });
          this.sockets.set(url, socket);
        }
        return socket;
      },
      track: (run) => this.following.add(run),
      untrack: (run) => this.following.delete(run),
    };
  }

  /** POST /runs: start a workflow run. Errors are HatchwayError with the API's code. */
  async start(workflow: string, input: unknown = {}, metadata?: Record<string, string>): Promise<Run> {
    if (!this.baseUrl) throw new HatchwayError("no_base_url", "the client has no baseUrl for the HTTP API");
    const body: Record<string, unknown> = { workflow, input };
    if (metadata !== undefined) body.metadata = metadata;
    let response: Response;
    try {
      response = await this.fetchImpl(`${this.baseUrl}/runs`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", ...this.options.headers },
        body: JSON.stringify(body),
      });
    } catch (cause) {
      throw new HatchwayError("network_error", `POST ${this.baseUrl}/runs failed: ${String(cause)}`, { cause });
    }
    if (!response.ok) throw await errorFromResponse(response);
    const started = (await response.json()) as StartResponse;
    const websocketUrl = started.websocketUrl ?? this.websocketUrl;
    if (!websocketUrl) throw new HatchwayError("bad_request", "POST /runs answered no websocketUrl");
    return new Run(this.context, {
      runId: started.runId,
      token: started.token,
      websocketUrl,
      ...(started.workflow === undefined ? {} : { workflow: started.workflow }),
      ...(started.status === undefined ? {} : { status: started.status }),
      ...(started.expiresAt === undefined ? {} : { expiresAt: started.expiresAt }),
    });
  }

  /** An existing run: its id and run token (from your backend), on websocketUrl or the client's. */
  attach(runId: string, token: string, websocketUrl?: string): Run {
    const url = websocketUrl ?? this.websocketUrl;
    if (!url) throw new HatchwayError("bad_request", "attach() needs a websocketUrl (here or in the client's options)");
    return new Run(this.context, { runId, token, websocketUrl: url });
  }

  /** Stop following every run and close every socket. */
  close(): void {
    for (const run of [...this.following]) run.close();
    for (const socket of [...this.sockets.values()]) socket.dispose();
    this.sockets.clear();
  }
}
