// Types of the notiflow JavaScript client (src/index.js).

/** A notification as the consumer gets it (SPEC §3's frame without `type`). */
export interface Notification {
  id: string;
  seq: number;
  event: string;
  payload: Record<string, unknown>;
  created_at: string;
  /** The notification's collapse key, when it has one: the newest of a key replaces the older ones. */
  collapse_key?: string;
  /** The id of the notification of the same key the listener got before: show this one in its place. */
  replaces?: string;
}

/** A JWT or API key, or a function returning a fresh one (called again after a 401 / close 4401). */
export type Token = string | null | (() => string | Promise<string>);

export interface NotiflowClientOptions {
  /** Gateway base URLs (`http://host:port`), tried in turn. */
  urls: string | string[];
  userId: string;
  token?: Token;
  /** Resume point: every seq at or below it was handled before (default 0). */
  afterSeq?: number;
  /** Notifications held for the listeners before live frames are left to the offline queue (default 1000). */
  buffer?: number;
  /** Ids kept for de-duplication; memory is O(window) (default 10000). */
  window?: number;
  /** Offline queue page size (default 500). */
  pageSize?: number;
  /** Full-jitter reconnect backoff base and cap, ms (defaults 250 / 10000). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** How long acks are gathered into one batch, ms (default 50). */
  ackIntervalMs?: number;
  /** Application pings; no frame for twice this long closes a half-open socket, ms (default 10000). */
  pingIntervalMs?: number;
  /** A seq gap open this long triggers a read of the offline queue, ms (default 5000). */
  gapCheckMs?: number;
  /** Deadline of each HTTP request (offline queue pages, acks), answer body included, ms (default 10000). */
  requestTimeoutMs?: number;
  /** A WebSocket class (default: the global one, else the `ws` package). */
  WebSocket?: unknown;
  /** A fetch function (default: the global one). */
  fetch?: typeof fetch;
}

export declare class NotiflowError extends Error {
  /** The close code or HTTP status, if any. */
  code: number | null;
  /** True if the client gave up (4400, 4403, a refused token it cannot refresh). */
  fatal: boolean;
}

export interface ClientEvents {
  notification: (n: Notification) => void | Promise<void>;
  connected: (info: { url: string }) => void;
  disconnected: (info: { url: string; code: number; reason: string }) => void;
  error: (err: Error) => void;
}

export declare class NotiflowClient {
  constructor(options: NotiflowClientOptions);
  readonly urls: string[];
  readonly userId: string;
  readonly tracker: SeenTracker;
  readonly collapser: Collapser;
  /** Connections that reached live mode so far. */
  readonly connects: number;
  /** The gateway the socket is open to, or null. */
  readonly url: string | null;
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  /**
   * Resolves on the first connection (offline queue read); rejects if the client gives up first. Where
   * `globalThis.addEventListener` exists (a browser), the `online` event ends a reconnect backoff at once.
   */
  start(): Promise<void>;
  /** Closes the socket and sends the pending acks over HTTP (at most 5 s). */
  stop(): Promise<void>;
}

export declare class SeenTracker {
  constructor(afterSeq?: number, window?: number);
  watermark: number;
  readonly window: number;
  readonly gaps: boolean;
  seen(id: string, seq: number): boolean;
  add(id: string, seq: number): void;
  raiseTo(seq: number): void;
}

/** Per collapse key, the newest seq received and the id last handed to the listener (docs/clients.md). */
export declare class Collapser {
  constructor(window?: number);
  readonly window: number;
  stale(item: Notification): boolean;
  received(item: Notification): void;
  taking(item: Notification): void;
}

export declare function backoffMs(attempt: number, baseMs: number, capMs: number, random?: () => number): number;

/** A frame's text as an object, or a NotiflowError saying why it is not a JSON object (never throws). */
export declare function parseFrame(data: string | { toString(): string }): Record<string, unknown> | NotiflowError;

/** A 4xx answer other than 429 (fatal): `code` is the HTTP status, `errorCode` the error body's code. */
export declare class RequestRejected extends NotiflowError {
  status: number;
  errorCode: string;
  details: unknown;
  /** sendMany: the results of the chunks accepted before this refusal. */
  accepted: Array<Accepted | RequestRejected>;
}
/** 400, 413, 415 or 422: nothing was stored. */
export declare class InvalidNotification extends RequestRejected {}
/** 422 idempotency_key_reused. */
export declare class IdempotencyKeyReused extends RequestRejected {}
/** 401 or 403. */
export declare class NotAllowed extends RequestRejected {}
/** Retries ran out; the notification was not stored. */
export declare class Unavailable extends NotiflowError {}
/** Retries ran out; the notification may exist: resending with `idempotencyKey` is safe. */
export declare class OutcomeUnknown extends Unavailable {
  idempotencyKey: string | null;
}

export interface Accepted {
  id: string;
  status: "accepted";
  /** null for a notification to a topic: its subscribers are counted as it is expanded, after the 202. */
  recipients: number | null;
  /** The topic, for a notification sent to one (sendTopic, or sendMany with topicNotification() items). */
  topic?: string;
}

/** One page of a topic's subscribers: pass nextAfter as `after` for the next (null: this is the last). */
export interface SubscribersPage {
  topic: string;
  subscribers: string[];
  nextAfter: string | null;
}

export interface SendOptions {
  ttlSeconds?: number;
  webhookUrl?: string;
  /** Delivery receipts (delivery.delivered, .dead, .expired, .replaced) are POSTed there (contract §4a). */
  statusUrl?: string;
  /** 1-128 printable characters: replaces the user's older unacknowledged notification with the same key. */
  collapseKey?: string;
  /** Default: a random UUID per notification, kept across its retries. */
  idempotencyKey?: string;
}

/** A notification as POST /notifications takes it, plus its optional idempotency_key (sendMany's items). */
export type NotificationBody = Record<string, unknown>;

export declare function notification(
  userIds: string | string[], event: string, payload?: Record<string, unknown>, options?: SendOptions,
): NotificationBody;

/** One notification to a topic's subscribers as sendMany takes it. */
export declare function topicNotification(
  topic: string, event: string, payload?: Record<string, unknown>, options?: SendOptions,
): NotificationBody;

export interface ProducerOptions {
  urls: string | string[];
  /** An API key with the send scope (or a function returning one). */
  token?: Token;
  /** Requests per send, retries included (default 8). */
  maxAttempts?: number;
  /** Full-jitter backoff: uniform(0, min(cap, base * 2**k)) ms; defaults 100 and 10000. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** No retry starts past this long after the send began (default 60000). */
  deadlineMs?: number;
  /** Deadline of one request, reading the answer included (default 10000). */
  requestTimeoutMs?: number;
  /** Notifications per POST /notifications/batch (1 to 1000, default 1000). */
  batchSize?: number;
  fetch?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
}

export declare class Producer {
  constructor(options: ProducerOptions);
  /** Requests sent, retries included. */
  attempts: number;
  send(userIds: string | string[], event: string, payload?: Record<string, unknown>, options?: SendOptions): Promise<Accepted>;
  /** To the topic's subscribers at acceptance; the 202 has recipients null and the topic. */
  sendTopic(topic: string, event: string, payload?: Record<string, unknown>, options?: SendOptions): Promise<Accepted>;
  sendMany(notifications: Iterable<NotificationBody>): Promise<Array<Accepted | RequestRejected>>;
  /** Idempotent: done also when already subscribed. */
  subscribe(topic: string, userId: string): Promise<void>;
  /** Idempotent: done also when not subscribed. */
  unsubscribe(topic: string, userId: string): Promise<void>;
  subscribersPage(topic: string, options?: { after?: string | null; limit?: number }): Promise<SubscribersPage>;
  /** Every subscriber, by user id, a page of `pageSize` (default 100) per request. */
  subscribers(topic: string, options?: { pageSize?: number }): AsyncIterableIterator<string>;
}
