/** One event of a job's stream, as the server sent it. */
export interface JobEvent {
  /** The job's own event number (as a string, as SSE ids are). */
  id: string;
  /** `queued`, `started`, `progress`, `retrying`, `retried`, `succeeded`, `failed`, `cancelled` or a handler's own type. */
  type: string;
  /** The event's data: `job_id`, `seq`, `type`, `at`, `status`, `attempt`, and per type `progress`, `message`, `result`, `error`, `data`. */
  data: any;
}

/** A failed connection attempt. */
export interface FollowError extends Error {
  /** The HTTP status, when the server answered. */
  status?: number;
  /** True when `follow` tries again (with backoff); false when it gave up (4xx: unknown job, bad id, no access). */
  retrying: boolean;
}

export interface FollowOptions {
  /** Every event, in order, exactly once. */
  onEvent?(event: JobEvent): void;
  /** `progress` events: the percentage 0-100 and the message. */
  onProgress?(progress: number, message: string | null, event: JobEvent): void;
  /** The job ended: its terminal status and event, or `null`s when the stream was already over (204) before this call saw it. */
  onDone?(status: 'succeeded' | 'failed' | 'cancelled' | null, event: JobEvent | null): void;
  /** A connection attempt failed; see `retrying`. */
  onError?(error: FollowError): void;
  /** The server's URL, for a job id outside a page served by jobcast (Node: required). */
  base?: string;
  /** Resume after this event id (events up to it are not delivered again). */
  lastEventId?: string | number;
  /** A stream token (`POST /v1/tokens`), sent as `?token=` — what EventSource needs when auth is on. */
  token?: string;
  /** Request headers, e.g. `{ Authorization: 'Bearer KEY' }`; implies the fetch transport. */
  headers?: Record<string, string>;
  /** `eventsource` (browser default) or `fetch` (Node, or when headers are given). */
  transport?: 'eventsource' | 'fetch';
  /** Custom event types to listen for with EventSource (fetch delivers every type anyway). */
  eventTypes?: string[];
  /** EventSource `withCredentials`. */
  withCredentials?: boolean;
  /** A fetch implementation (default: globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface Following {
  /** Stops following; no handler is called afterwards. */
  close(): void;
  /** The id of the last event delivered (or the resume point). */
  readonly lastEventId: string | null;
}

/** Follows a job given its id or the URL of its events stream, until it ends or `close()`. */
export function follow(target: string, options?: FollowOptions): Following;

/** Reads an SSE response body, calling `onEvent(type, id, data)` per event while `current()` is true. */
export function readEvents(
  body: ReadableStream<Uint8Array>,
  onEvent: (type: string, id: string | null, data: string) => void,
  current?: () => boolean,
): Promise<void>;
