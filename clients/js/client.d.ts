/** One event of a job's stream, as the server sent it. */
export interface JobEvent {
  /** The job's own event number (as a string, as SSE ids are). */
  id: string;
  /** `queued`, `started`, `progress`, `output`, `retrying`, `retried`, `succeeded`, `failed`, `cancelled` or a handler's own type. */
  type: string;
  /**
   * The event's data: `job_id`, `seq`, `type`, `at`, `status`, `attempt`, `kind`, `queue`,
   * `tags`, and per type `progress`, `message`, `result`, `error`, `data`; on `output`:
   * `stream`, `offset` (UTF-8 bytes before `text` in this attempt's stream) and `text`.
   */
  data: any;
}

/** A failed connection attempt. */
export interface FollowError extends Error {
  /** The HTTP status, when the server answered. */
  status?: number;
  /** True when `follow` tries again (with backoff); false when it gave up (4xx: unknown job, bad id, no access). */
  retrying: boolean;
}

/** What `follow` and `followTag` share. */
export interface StreamOptions {
  /** Every event, in order, exactly once. */
  onEvent?(event: JobEvent): void;
  /** A connection attempt failed; see `retrying`. */
  onError?(error: FollowError): void;
  /**
   * The server's database is no longer the history this stream was reading (an
   * asynchronous failover lost events already delivered): what was shown is stale. The
   * client drops its text (and `followTag` its jobs, listed again) and goes on from the
   * reset's id: a job stream replays from the start, a tag stream from now.
   */
  onReset?(event: JobEvent): void;
  /** The server's URL, outside a page served by jobcast (Node: required). */
  base?: string;
  /** Resume after this event id (`follow`: a job's seq; `followTag`: the firehose's opaque cursor). */
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

/**
 * The text so far of each output stream of the job's current attempt, by stream name
 * (`{ output: "tok1 tok2 " }`). It starts again, empty, with each attempt (a `started`
 * event, or an event of another `attempt`). An `output` event that overlaps what is held (a
 * replay) adds only what is new; a gap (joined midway: `followTag` of a running job, or
 * `lastEventId` past the first output) is filled from `GET /v1/jobs/ID/output/NAME` when
 * that answers (an API key in `headers`, or no auth), else logged (console.warn) and skipped.
 */
export type OutputText = Record<string, string>;

export interface FollowOptions extends StreamOptions {
  /** `progress` events: the percentage 0-100 and the message. */
  onProgress?(progress: number, message: string | null, event: JobEvent): void;
  /**
   * Text appended to an output stream: `text` is what is new (append it), `event` the
   * `output` event it came in (or, for text loaded to fill a gap, a made-up one with id
   * null). The whole text so far is `following.text(stream)`. A new attempt starts the
   * streams again: clear what you show when an event's `data.attempt` changes (a `started`
   * event, see onEvent), or show `following.text(stream)` rather than appending.
   */
  onOutput?(stream: string, text: string, event: JobEvent): void;
  /** The job ended: its terminal status and event, or `null`s when the stream was already over (204) before this call saw it. */
  onDone?(status: 'succeeded' | 'failed' | 'cancelled' | null, event: JobEvent | null): void;
}

export interface Following {
  /** Stops following; no handler is called afterwards. */
  close(): void;
  /** True once closed (by `close()`, after the end, or after a fatal error). */
  readonly closed: boolean;
  /** The id of the last event delivered (or the resume point). */
  readonly lastEventId: string | null;
  /** The text so far per output stream of the current attempt. */
  readonly output: OutputText;
  /** The text so far of one output stream (default `output`); `''` when it has none. */
  text(stream?: string): string;
}

/** A job as `followTag` knows it: the job object when it was listed, kept up to date from its events. */
export interface TaggedJob {
  id: string;
  kind?: string;
  queue?: string;
  status?: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  /** 0-100, or null before the first report of the current attempt. */
  progress?: number | null;
  message?: string | null;
  attempt?: number;
  tags?: Record<string, string>;
  result?: any;
  error?: { message: string; [key: string]: any } | null;
  /** The seq of the last event applied. */
  last_event_id: number;
  updated_at?: string;
  /** The text so far per output stream of the current attempt (with `onOutput` only). */
  readonly output: OutputText;
  /** Listed jobs carry every other field of the job object too. */
  [field: string]: any;
}

export interface FollowTagOptions extends StreamOptions {
  /** A job appeared or changed: after each of its events but `output`, and once when listed. The same object each time. */
  onJob?(job: TaggedJob): void;
  /**
   * Text appended to a job's output stream (see `FollowOptions.onOutput`); the whole text
   * is `job.output[stream]`. Given, the stream asks for output events (`?output=1`).
   */
  onOutput?(jobId: string, stream: string, text: string, event: JobEvent): void;
  /**
   * The jobs that already have the tags: once the stream is open, `GET /v1/jobs?tag=…`
   * lists this many (default 100, newest; each handed to onJob, oldest first); `false`
   * skips it. Needs an API key in `headers` when auth is on (a stream token opens streams
   * only): without one, only jobs with events after the stream opened are known.
   */
  list?: number | false;
}

export interface FollowingTag {
  /** Stops following; no handler is called afterwards. */
  close(): void;
  /** True once closed (by `close()`, or after a fatal error: 401, 403, 422). */
  readonly closed: boolean;
  /** The firehose cursor of the last event delivered (opaque), for `lastEventId` later. */
  readonly lastEventId: string | null;
  /** Every job seen, by id. */
  readonly jobs: Map<string, TaggedJob>;
}

/** Follows a job given its id or the URL of its events stream, until it ends or `close()`. */
export function follow(target: string, options?: FollowOptions): Following;

/**
 * Follows every job carrying all of `tags` (e.g. `{ user: '42' }`), those that exist and
 * those created later, over one connection (`GET /v1/events?tag=user:42`), until `close()`:
 * what a page showing many jobs needs (browsers allow six connections per host).
 */
export function followTag(tags: Record<string, string>, options?: FollowTagOptions): FollowingTag;

/** Reads an SSE response body, calling `onEvent(type, id, data)` per event while `current()` is true. */
export function readEvents(
  body: ReadableStream<Uint8Array>,
  onEvent: (type: string, id: string | null, data: string) => void,
  current?: () => boolean,
): Promise<void>;
