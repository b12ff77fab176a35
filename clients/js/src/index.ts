export { HatchwayClient } from "./client.js";
export { Run } from "./run.js";
export { HatchwayError, RunFailedError, type FailedStatus } from "./errors.js";
export { backoffDelay } from "./backoff.js";
export type {
  BatchMessage,
  ChunkFrame,
  ConnectionInfo,
  ConnectionState,
  ControlFrame,
  ErrorFrame,
  FileFrame,
  FollowOptions,
  Frame,
  GapFrame,
  HatchwayClientOptions,
  PongFrame,
  ReconnectOptions,
  RunEventName,
  RunEvents,
  RunStatus,
  SequencedFrame,
  ServerFrame,
  StatusFrame,
  StorageLike,
  SubscribedFrame,
  UnsubscribedFrame,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
