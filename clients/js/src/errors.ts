import type { StatusFrame } from "./types.js";

/**
 * An error Hatchway reported (an HTTP error body `{"error": {"code", "message"}}` or an
 * `error` frame on the socket), or one of the client's own (code `network_error`,
 * `reference_unavailable`, `no_websocket`, `closed`).
 */
export class HatchwayError extends Error {
  readonly code: string;
  /** The HTTP status, for an error of the HTTP API. */
  readonly status: number | undefined;
  /** The run the error is about, when known. */
  readonly runId: string | undefined;

  constructor(code: string, message: string, options: { status?: number; runId?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "HatchwayError";
    this.code = code;
    this.status = options.status;
    this.runId = options.runId;
  }
}

export type FailedStatus = "FAILED" | "CANCELLED" | "TIMED_OUT";

/** run.result() of a run whose final status is FAILED, CANCELLED or TIMED_OUT. */
export class RunFailedError extends Error {
  readonly status: FailedStatus;
  readonly frame: StatusFrame;

  constructor(frame: StatusFrame) {
    super(frame.error ?? `run ${frame.runId} ended ${frame.status}`);
    this.name = "RunFailedError";
    this.status = frame.status as FailedStatus;
    this.frame = frame;
  }
}

const CODE_BY_STATUS: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  413: "too_large",
  429: "rate_limited",
  500: "internal",
  502: "upstream_unavailable",
};

/** The HatchwayError an HTTP error response stands for (its body in the protocol's shape when it has one). */
export async function errorFromResponse(response: Response, runId?: string): Promise<HatchwayError> {
  let code = CODE_BY_STATUS[response.status] ?? (response.status >= 500 ? "internal" : "bad_request");
  let message = `HTTP ${response.status}`;
  try {
    const body: unknown = await response.json();
    const error = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    if (error && typeof error.code === "string") {
      code = error.code;
      if (typeof error.message === "string") message = error.message;
    } else if (body && typeof (body as { message?: unknown }).message === "string") {
      message = (body as { message: string }).message; // API Gateway's own shape
    }
  } catch {
    // not JSON: keep the status's code
  }
  return new HatchwayError(code, message, { status: response.status, ...(runId === undefined ? {} : { runId }) });
}

export function abortError(message = "The operation was aborted"): Error {
  if (typeof DOMException === "function") return new DOMException(message, "AbortError");
  const error = new Error(message);
  error.name = "AbortError";
  return error;
}
