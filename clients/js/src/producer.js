// notiflow producer for Node backends: the same rules as the Python Producer (platform/notiflow/client/producer.py).
//
// - Every notification carries an idempotency key (the caller's, or a random UUID), so a retry after any
//   failure creates nothing new.
// - 429 and 5xx answers (outcome_unknown included), connection errors and request timeouts are retried with
//   full-jitter backoff, never sooner than Retry-After, within `maxAttempts` and `deadlineMs`; connection
//   errors and 5xx move on to the next URL. Other 4xx throw a RequestRejected subclass at once.
// - sendMany posts /notifications/batch chunks of at most `batchSize` (1,000) notifications; a chunk refused as
//   over_ingest_burst is split in halves.
// - Topics: sendTopic (or topicNotification() items for sendMany) sends to a topic's subscribers; subscribe,
//   unsubscribe (idempotent PUT/DELETE) and subscribers (GET, page by page) change and read them, under the
//   same retry rules.
// - Every request has a deadline (`requestTimeoutMs`, reading the answer included).

import { NotiflowError, backoffMs, timeoutSignal } from "./common.js";

export const MAX_BATCH = 1000;
// Errors of a connection that was never made: the request cannot have been accepted.
const NOT_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"]);

/** A 4xx answer other than 429: sending it again will not help. `code` is the HTTP status (as on every
 * NotiflowError), `errorCode` the error body's code, `details` its details. */
export class RequestRejected extends NotiflowError {
  constructor(status, error) {
    super(`${status} ${error.code}: ${error.message}`, { code: status, fatal: true });
    this.name = "RequestRejected";
    this.status = status;
    this.errorCode = error.code;
    this.details = error.details ?? null;
    this.accepted = []; // sendMany: what earlier chunks of the same call got
  }
}
/** 400, 413, 415 or 422: malformed or too large; nothing was stored. */
export class InvalidNotification extends RequestRejected {}
/** 422 idempotency_key_reused: the key was used before with a different body. */
export class IdempotencyKeyReused extends RequestRejected {}
/** 401 or 403: credentials missing, invalid, or without the send scope. */
export class NotAllowed extends RequestRejected {}
/** Retries ran out and the notification was not stored. */
export class Unavailable extends NotiflowError {}
/** Retries ran out and the notification may have been stored: resending with `idempotencyKey` is safe. */
export class OutcomeUnknown extends Unavailable {
  constructor(message, idempotencyKey) {
    super(message);
    this.idempotencyKey = idempotencyKey;
  }
}

function rejected(status, error) {
  const kind = error.code === "idempotency_key_reused" ? IdempotencyKeyReused
    : status === 401 || status === 403 ? NotAllowed
      : [400, 413, 415, 422].includes(status) ? InvalidNotification : RequestRejected;
  const err = new kind(status, error);
  err.name = kind.name;
  return err;
}

function body(to, event, payload, { ttlSeconds, webhookUrl, statusUrl, collapseKey, idempotencyKey } = {}) {
  const out = { ...to, event, payload };
  if (ttlSeconds !== undefined) out.ttl_seconds = ttlSeconds;
  if (webhookUrl !== undefined) out.webhook_url = webhookUrl;
  if (statusUrl !== undefined) out.status_url = statusUrl;
  if (collapseKey !== undefined) out.collapse_key = collapseKey;
  if (idempotencyKey !== undefined) out.idempotency_key = idempotencyKey;
  return out;
}

/** One notification to users as sendMany takes it (the body of POST /notifications, plus its key). */
export function notification(userIds, event, payload = {}, options = {}) {
  return body(typeof userIds === "string" ? { user_id: userIds } : { user_ids: [...userIds] }, event, payload, options);
}

/** One notification to a topic's subscribers as sendMany takes it. */
export function topicNotification(topic, event, payload = {}, options = {}) {
  return body({ topic }, event, payload, options);
}

/** The 202 answer of one notification: {id, status, recipients} (recipients null for a topic), plus topic. */
function acceptedAnswer(r) {
  const out = { id: r.id, status: r.status, recipients: r.recipients };
  if (r.topic !== undefined) out.topic = r.topic;
  return out;
}

const subscriberPath = (topic, userId) =>
  `/topics/${encodeURIComponent(topic)}/subscribers/${encodeURIComponent(userId)}`;

const newKey = () => `auto-${globalThis.crypto.randomUUID()}`;

async function errorBody(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object") return body.error;
  } catch { /* not JSON: described below */ }
  return { code: `http_${resp.status}`, message: text.slice(0, 200), details: null };
}

export class Producer {
  constructor({
    urls, token = null, maxAttempts = 8, backoffBaseMs = 100, backoffCapMs = 10000, deadlineMs = 60000,
    requestTimeoutMs = 10000, batchSize = MAX_BATCH, fetch = null, sleep = null, random = Math.random,
  }) {
    this._urls = (typeof urls === "string" ? [urls] : [...urls]).map((u) => u.replace(/\/+$/, ""));
    if (!this._urls.length) throw new RangeError("Producer needs at least one gateway URL");
    if (!(batchSize >= 1 && batchSize <= MAX_BATCH)) throw new RangeError(`batchSize must be 1 to ${MAX_BATCH}`);
    Object.assign(this, { _token: token, _maxAttempts: maxAttempts, _baseMs: backoffBaseMs, _capMs: backoffCapMs });
    Object.assign(this, { _deadlineMs: deadlineMs, _timeoutMs: requestTimeoutMs, _batchSize: batchSize });
    this._fetch = fetch ?? globalThis.fetch.bind(globalThis);
    this._sleep = sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this._random = random;
    this._at = 0;
    this.attempts = 0; // requests sent, retries included
  }

  /** Send one notification; its 202 answer {id, status, recipients}. */
  async send(userIds, event, payload = {}, { idempotencyKey, ...options } = {}) {
    const answer = await this._request("POST", "/notifications", notification(userIds, event, payload, options),
      idempotencyKey ?? newKey());
    return acceptedAnswer(answer);
  }

  /** Send one notification to the topic's subscribers at acceptance; its 202 answer {id, status, recipients:
   * null, topic}. The same errors as send. */
  async sendTopic(topic, event, payload = {}, { idempotencyKey, ...options } = {}) {
    const answer = await this._request("POST", "/notifications", topicNotification(topic, event, payload, options),
      idempotencyKey ?? newKey());
    return acceptedAnswer(answer);
  }

  /** Subscribe userId to topic (done also when it already was). */
  async subscribe(topic, userId) {
    await this._request("PUT", subscriberPath(topic, userId));
  }

  /** Unsubscribe userId from topic (done also when it was not subscribed). */
  async unsubscribe(topic, userId) {
    await this._request("DELETE", subscriberPath(topic, userId));
  }

  /** One page of the topic's subscribers after `after` (by user id), at most `limit` (1-1000):
   * {topic, subscribers, nextAfter}; pass nextAfter as `after` for the next page (null: the last). */
  async subscribersPage(topic, { after = null, limit = 100 } = {}) {
    const query = new URLSearchParams({ after: after ?? "", limit: String(limit) });
    const page = await this._request("GET", `/topics/${encodeURIComponent(topic)}/subscribers?${query}`);
    return { topic: page.topic, subscribers: page.subscribers, nextAfter: page.next_after };
  }

  /** Every subscriber of the topic, by user id, a page of `pageSize` per request: `for await (const u of ...)`. */
  async *subscribers(topic, { pageSize = 100 } = {}) {
    let after = null;
    for (;;) {
      const page = await this.subscribersPage(topic, { after, limit: pageSize });
      yield* page.subscribers;
      if (page.nextAfter === null || page.nextAfter === after) return; // no progress: never loop on one page
      after = page.nextAfter;
    }
  }

  /** Send many (objects as notification() builds them) in batches; one result per notification, in order: its
   * 202 answer, or the RequestRejected of an item refused alone. A chunk refused whole throws, with
   * `accepted` holding the results of the chunks before it and `details[].index` counted in the whole call. */
  async sendMany(notifications) {
    const items = [...notifications].map((n) => ({ ...n, idempotency_key: n.idempotency_key ?? newKey() }));
    const results = [];
    for (let start = 0; start < items.length; start += this._batchSize) {
      try {
        results.push(...await this._sendChunk(items.slice(start, start + this._batchSize)));
      } catch (err) {
        if (err instanceof RequestRejected) {
          for (const bad of Array.isArray(err.details) ? err.details : []) {
            if (bad && Number.isInteger(bad.index)) bad.index += start;
          }
          err.accepted = results;
        }
        throw err;
      }
    }
    return results;
  }

  async _sendChunk(chunk) {
    let answer;
    try {
      answer = await this._request("POST", "/notifications/batch", { notifications: chunk });
    } catch (err) {
      if (!(err instanceof InvalidNotification) || err.errorCode !== "over_ingest_burst" || chunk.length === 1) throw err;
      const half = chunk.length >> 1; // too many deliveries in one request: nothing was stored, split it
      return [...await this._sendChunk(chunk.slice(0, half)), ...await this._sendChunk(chunk.slice(half))];
    }
    return answer.results.map((r) => (r.error ? rejected(422, r.error) : acceptedAnswer(r)));
  }

  async _tokenNow() {
    return typeof this._token === "function" ? this._token() : this._token;
  }

  /** Request until a 2xx (its JSON, {} for a 204), a 4xx (thrown typed) or the retries run out. Only
   * idempotent requests come here: a POST with its idempotency key, a PUT, DELETE or GET. */
  async _request(method, path, body = null, key = null) {
    const content = body === null ? undefined : JSON.stringify(body);
    const started = Date.now();
    let maybeStored = false;
    let why = "no attempt";
    let tried = 0;
    for (let attempt = 0; attempt < this._maxAttempts; attempt++) {
      tried++;
      const url = this._urls[this._at % this._urls.length];
      const headers = { accept: "application/json" };
      if (content !== undefined) headers["content-type"] = "application/json";
      if (key !== null) headers["idempotency-key"] = key;
      const token = await this._tokenNow();
      if (token) headers.authorization = `Bearer ${token}`;
      this.attempts++;
      let waitMs = 0;
      const signal = timeoutSignal(this._timeoutMs);
      try {
        const resp = await this._fetch(url + path, { method, headers, body: content, signal });
        if (resp.ok) {
          const text = await resp.text();
          return text ? JSON.parse(text) : {};
        }
        const error = await errorBody(resp);
        if (resp.status < 500 && resp.status !== 429) throw rejected(resp.status, error);
        if (resp.status >= 500) {
          this._at++;
          maybeStored ||= !["unavailable", "store_busy"].includes(error.code);
        }
        waitMs = 1000 * (Number.parseFloat(resp.headers.get("retry-after") ?? "") || 0);
        why = `${url}: ${resp.status} ${error.code}`;
      } catch (err) {
        if (err instanceof RequestRejected) throw err;
        this._at++; // unreachable, died, or too slow: the next gateway
        maybeStored ||= !NOT_SENT.has(err?.cause?.code);
        why = `${url}: ${signal.aborted ? `no answer within ${this._timeoutMs} ms` : err?.cause?.code ?? err.message}`;
      }
      waitMs = Math.max(waitMs, backoffMs(attempt, this._baseMs, this._capMs, this._random));
      if (attempt + 1 >= this._maxAttempts || Date.now() - started + waitMs > this._deadlineMs) break;
      await this._sleep(waitMs);
    }
    const message = `gave up after ${tried} attempts: ${why}`;
    // Only a POST can leave something behind to resend with its key: a PUT, DELETE or GET may simply be retried.
    throw maybeStored && method === "POST" ? new OutcomeUnknown(message, key) : new Unavailable(message);
  }
}
