/** React binding: useHatchwayRun follows a run while the component is mounted. */

import { useEffect, useRef, useState } from "react";
import type { HatchwayClient } from "./client.js";
import type { Run } from "./run.js";
import type { ConnectionState, Frame, GapFrame, StatusFrame } from "./types.js";

export type UseHatchwayRunOptions =
  | {
      client: HatchwayClient;
      runId: string;
      token: string;
      websocketUrl?: string;
      after?: number;
      resumeKey?: string;
      run?: undefined;
    }
  | { run: Run; after?: number; resumeKey?: string };

export interface HatchwayRunState {
  /** The run's frames so far, in seq order. */
  frames: Frame[];
  /** The chunks' data concatenated. */
  text: string;
  /** The latest status frame, or null. */
  status: StatusFrame | null;
  /** The latest gap frame, or null: frames were lost at that point. */
  gap: GapFrame | null;
  /** Why the run could not be followed, or null. */
  error: Error | null;
  connection: ConnectionState;
}

function stateOf(frames: Frame[], connection: ConnectionState): HatchwayRunState {
  let text = "";
  let status: StatusFrame | null = null;
  let gap: GapFrame | null = null;
  for (const frame of frames) {
    if (frame.type === "chunk") text += frame.data ?? "";
    else if (frame.type === "status") status = frame;
    else if (frame.type === "gap") gap = frame;
  }
  return { frames, text, status, gap, error: null, connection };
}

/**
 * Follow a run while mounted: `{ client, runId, token, websocketUrl?, after?, resumeKey? }`
 * (the hook attaches a Run of its own) or `{ run }`. Unmounting stops the hook's follow
 * (the run unsubscribes unless something else still watches that Run). `null` renders an
 * idle state (no run yet).
 */
export function useHatchwayRun(options: UseHatchwayRunOptions | null | undefined): HatchwayRunState {
  const [state, setState] = useState<HatchwayRunState>(() =>
    options?.run ? stateOf(options.run.delivered(), "connecting") : stateOf([], options ? "connecting" : "closed"),
  );
  const latest = useRef(options);
  latest.current = options;

  const run = options?.run;
  const client = options && !options.run ? options.client : undefined;
  const runId = options && !options.run ? options.runId : undefined;
  const websocketUrl = options && !options.run ? options.websocketUrl : undefined;
  const resumeKey = options?.resumeKey;

  useEffect(() => {
    const current = latest.current;
    if (!current) {
      setState(stateOf([], "closed"));
      return undefined;
    }
    let target: Run;
    try {
      target = current.run ?? current.client.attach(current.runId, current.token, current.websocketUrl);
    } catch (error) {
      setState({ ...stateOf([], "closed"), error: error instanceof Error ? error : new Error(String(error)) });
      return undefined;
    }
    const accumulated = stateOf(target.delivered(), target.final ? "closed" : "connecting");
    let active = true;
    let scheduled = false;
    const flush = (): void => {
      scheduled = false;
      if (active) setState({ ...accumulated, frames: accumulated.frames.slice() });
    };
    const schedule = (): void => {
      if (scheduled) return;
      scheduled = true;
      queueMicrotask(flush);
    };
    const offs = [
      target.on("frame", (frame) => {
        accumulated.frames.push(frame);
        if (frame.type === "chunk") accumulated.text += frame.data ?? "";
        else if (frame.type === "status") accumulated.status = frame;
        else if (frame.type === "gap") accumulated.gap = frame;
        schedule();
      }),
      target.on("connection", (connection) => {
        accumulated.connection = connection;
        schedule();
      }),
    ];
    flush();
    // the hook's own watch of the run: unmounting ends it, and the run unsubscribes unless
    // something else (the caller's iterator, text(), result()) still watches that Run
    const controller = new AbortController();
    const follow: { after?: number; resumeKey?: string; signal: AbortSignal } = { signal: controller.signal };
    if (current.after !== undefined) follow.after = current.after;
    if (current.resumeKey !== undefined) follow.resumeKey = current.resumeKey;
    target.follow(follow).then(
      () => {
        accumulated.connection = "closed";
        schedule();
      },
      (error: unknown) => {
        if (!active) return; // stopped by the unmount below
        accumulated.error = error instanceof Error ? error : new Error(String(error));
        accumulated.connection = "closed";
        schedule();
      },
    );
    return () => {
      active = false;
      for (const off of offs) off();
      controller.abort();
    };
  }, [run, client, runId, websocketUrl, resumeKey]);

  return state;
}

export type { ConnectionState, Frame, GapFrame, StatusFrame } from "./types.js";
