// notiflow JavaScript client (ESM, no build step, no runtime dependencies in browsers; in Node without a
// global WebSocket the `ws` package is loaded). The same behaviour as the Python client
// (platform/notiflow/client/core.py, with its reconnect loop in connection.py):
//
// - On every (re)connect: open the socket, send a ping and wait for the pong (the gateway answers only once
//   the socket is registered in presence), then read every page of the offline queue after the watermark
//   and merge it with the live frames that arrived meanwhile, in seq order.
// - De-duplication by a seq watermark plus a bounded window of ids (SeenTracker): memory is O(window).
// - A notification is acknowledged after every "notification" listener returned (or its promise resolved);
//   acks are batched into socket ack frames, or POSTed to the ack endpoint when no socket is open. One
//   seen again after it was acknowledged is acknowledged again (the first ack may have died with a socket).
//   A listener that throws: the notification is not acknowledged (it stays in the offline queue).
// - Close codes (gateway/protocol.py, SPEC §7): 4401 refreshes the token when `token` is a function, else
//   gives up; 4400, 4403 and 1009 give up (an "error" event with `fatal: true`); anything else reconnects
//   to the next URL after full-jitter backoff.
// - Every HTTP request has a deadline (`requestTimeoutMs`); a frame that is not a JSON object is reported
//   as an "error" event and skipped, never thrown into the socket's handler; in a browser, the `online`
//   event ends a reconnect backoff at once.

import { Collapser } from "./collapse.js";
import { NotiflowError, backoffMs, timeoutSignal } from "./common.js";

export { Collapser, NotiflowError, backoffMs };
export {
  IdempotencyKeyReused, InvalidNotification, NotAllowed, OutcomeUnknown, Producer, RequestRejected, Unavailable,
  notification, topicNotification,
} from "./producer.js";

const CLOSE_GIVE_UP = new Map([
  [4400, "invalid user id"],
  [4403, "not this user's token"],
  [1009, "frame too large"],
]);
const UNAUTHORIZED = 4401;
const MAX_ACK_IDS = 1000;
const MAX_REFRESHES = 3;
const PING = JSON.stringify({ type: "ping" });
// A socket ack frame carries a "ref" (a counter per socket) and is confirmed by {"type":"acked","ref"} once
// committed. Those sent this recently and not answered when a socket dies are sent again (acks are
// idempotent), since the node may have died before it committed them; the window bounds what is kept for a
// gateway that never confirms.
const ACK_RESEND_MS = 5000;


/** The gateway answered the ack frame `ref` (acked or ack_failed): no resend if the socket dies. Its ids
 * (none for a ref that is not one of this socket's acks awaiting an answer). */
function answered(link, ref) {
  const entry = link.sentAcks.get(ref);
  if (entry === undefined) return [];
  link.sentAcks.delete(ref);
  return entry[1];
}


/**
 * What a client has seen: every seq <= `watermark` was seen (or closed when the queue was read); seqs
 * above it seen out of order wait until the gap below closes; ids of the last `window` are kept.
 * `seen` is O(1) (two Set lookups); `add` is O(1) for ids (a Set in insertion order, the oldest evicted
 * first) and O(log n) for a seq above a gap (a min-heap beside a Set). Memory is O(window).
 */
export class SeenTracker {
  constructor(afterSeq = 0, window = 10000) {
    if (window < 1) throw new RangeError("window must be >= 1");
    this.watermark = afterSeq;
    this.window = window;
    this._above = new MinHeap(); // seen seqs > watermark
    this._aboveSet = new Set();
    this._ids = new Set(); // insertion order = age
  }

  seen(id, seq) {
    return seq <= this.watermark || this._aboveSet.has(seq) || this._ids.has(id);
  }

  add(id, seq) {
    this._ids.delete(id);
    this._ids.add(id);
    if (this._ids.size > this.window) this._ids.delete(this._ids.values().next().value);
    if (seq > this.watermark && !this._aboveSet.has(seq)) {
      this._above.push(seq);
      this._aboveSet.add(seq);
    }
    this._advance();
    while (this._above.size > this.window) this.raiseTo(this._above.peek()); // a gap held open too long
  }

  raiseTo(seq) {
    if (seq > this.watermark) this.watermark = seq;
    this._advance();
  }

  get gaps() {
    return this._above.size > 0;
  }

  _advance() {
    while (this._above.size && this._above.peek() <= this.watermark + 1) {
      const seq = this._above.pop();
      this._aboveSet.delete(seq);
      this.watermark = Math.max(this.watermark, seq);
    }
  }
}

/** A binary min-heap of numbers (what Python's heapq gives the Python tracker). */
class MinHeap {
  constructor() {
    this._items = [];
  }

  get size() {
    return this._items.length;
  }

  peek() {
    return this._items[0];
  }

  push(value) {
    const a = this._items;
    a.push(value);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (a[parent] <= value) break;
      a[i] = a[parent];
      i = parent;
    }
    a[i] = value;
  }

  pop() {
    const a = this._items;
    const top = a[0];
    const last = a.pop();
    if (a.length) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= a.length) break;
        if (child + 1 < a.length && a[child + 1] < a[child]) child++;
        if (a[child] >= last) break;
        a[i] = a[child];
        i = child;
      }
      a[i] = last;
    }
    return top;
  }
}

/** A frame as an object, or a NotiflowError saying why it is not one (never throws). */
export function parseFrame(data) {
  const text = typeof data === "string" ? data : String(data);
  let frame;
  try {
    frame = JSON.parse(text);
  } catch (err) {
    return new NotiflowError(`bad frame (not JSON: ${err.message}): ${text.slice(0, 100)}`);
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    return new NotiflowError(`bad frame (not a JSON object): ${text.slice(0, 100)}`);
  }
  return frame;
}

async function socketClass(given) {
  if (given) return { WS: given, headers: false };
  if (typeof globalThis.WebSocket === "function") return { WS: globalThis.WebSocket, headers: false };
  const mod = await import("ws"); // Node without a global WebSocket
  return { WS: mod.WebSocket ?? mod.default, headers: true };
}

export class NotiflowClient {
  /**
   * @param {import("./index").NotiflowClientOptions} options
   */
  constructor({
    urls, userId, token = null, afterSeq = 0, buffer = 1000, window = 10000, pageSize = 500,
    backoffBaseMs = 250, backoffCapMs = 10000, ackIntervalMs = 50, pingIntervalMs = 10000,
    gapCheckMs = 5000, requestTimeoutMs = 10000, WebSocket = null, fetch = null,
  }) {
    this.urls = (Array.isArray(urls) ? urls : [urls]).map((u) => u.replace(/\/+$/, ""));
    if (!this.urls.length) throw new TypeError("give at least one gateway URL");
    if (!userId) throw new TypeError("userId is required");
    this.userId = userId;
    this.tracker = new SeenTracker(afterSeq, window);
    this.collapser = new Collapser(window);
    this.connects = 0;
    this._token = token;
    this._current = typeof token === "string" ? token : null;
    this._stale = typeof token === "function";
    this._refusals = 0;
    this._ackUpTo = afterSeq;
    this._buffer = buffer;
    this._window = window;
    this._pageSize = pageSize;
    this._backoff = [backoffBaseMs, backoffCapMs];
    this._ackIntervalMs = ackIntervalMs;
    this._pingIntervalMs = pingIntervalMs;
    this._gapCheckMs = gapCheckMs;
    this._requestTimeoutMs = requestTimeoutMs;
    this._givenWS = WebSocket;
    this._fetch = fetch ?? globalThis.fetch.bind(globalThis);
    this._listeners = new Map();
    this._queue = [];
    this._untaken = new Set();
    this._noAck = new Set();
    this._acks = [];
    this._ackTimer = null;
    this._link = null;
    this._index = Math.floor(Math.random() * this.urls.length);
    this._stopped = true;
    this._wake = null;
    this._roomWaiters = [];
    this._overflow = false;
    this._pumping = null;
    this._socket = null;
    this._onOnline = () => this._wake?.(); // the network is back: end the backoff now
  }

  /** The gateway the socket is open to, or null. */
  get url() {
    return this._link?.live ? this._link.url : null;
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  _emitEvent(event, arg) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(arg);
      } catch (err) {
        if (event !== "error") this._emitEvent("error", err);
      }
    }
  }

  /** Start; resolves on the first connection (offline queue read), rejects if the client gives up first. */
  start() {
    if (!this._stopped) throw new Error("the client is already started");
    this._stopped = false;
    globalThis.addEventListener?.("online", this._onOnline);
    return new Promise((resolve, reject) => {
      this._started = { resolve, reject };
      this._running = this._run().catch((err) => this._fail(err));
    });
  }

  /** Stop: close the socket, send the pending acks over HTTP (at most 5 s). */
  async stop() {
    if (this._stopped) return;
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._wake?.();
    this._socket?.close(1000, "client stop");
    clearTimeout(this._ackTimer);
    await this._running;
    await this._pumping;
    try {
      await Promise.race([this._flushHttp(), new Promise((_, no) => setTimeout(no, 5000, new Error("timeout")))]);
    } catch (err) {
      this._emitEvent("error", new NotiflowError(`acks not flushed at stop: ${err.message}`));
    }
  }

  _fail(err) {
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._socket?.close(1000);
    this._emitEvent("error", err);
    this._started?.reject(err);
  }

  // -- connection loop -----------------------------------------------------------------------------

  async _run() {
    const { WS, headers } = await socketClass(this._givenWS);
    let failures = 0;
    while (!this._stopped) {
      const url = this.urls[this._index++ % this.urls.length];
      const out = await this._session(WS, headers, url);
      if (this._stopped) return;
      if (out.error instanceof NotiflowError && out.error.code === 401 || out.code === UNAUTHORIZED) {
        this._refusals++;
        if (typeof this._token !== "function" || this._refusals > MAX_REFRESHES) {
          throw new NotiflowError("token refused and no way to refresh it", { code: out.code ?? 401, fatal: true });
        }
        this._stale = true;
      } else if (CLOSE_GIVE_UP.has(out.code)) {
        throw new NotiflowError(CLOSE_GIVE_UP.get(out.code), { code: out.code, fatal: true });
      } else if (out.error?.fatal) {
        throw out.error;
      } else if (out.error) {
        this._emitEvent("error", out.error);
      }
      failures = out.stable ? 1 : failures + 1;
      await this._sleep(backoffMs(failures - 1, ...this._backoff));
    }
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this._wake = () => { clearTimeout(timer); resolve(); };
    });
  }

  async _tokenNow() {
    if (typeof this._token === "function" && (this._stale || this._current === null)) {
      this._current = await this._token();
      this._stale = false;
    }
    return this._current;
  }

  async _session(WS, headers, url) {
    let token;
    try {
      token = await this._tokenNow();
    } catch (err) {
      return { error: new NotiflowError(`token callback failed: ${err.message}`) };
    }
    let wsUrl = `${url.replace(/^http/, "ws")}/ws/${encodeURIComponent(this.userId)}`;
    const opts = {};
    if (token && headers) opts.headers = { Authorization: `Bearer ${token}` };
    else if (token) wsUrl += `?token=${encodeURIComponent(token)}`;
    return new Promise((resolve) => {
      const ws = headers ? new WS(wsUrl, opts) : new WS(wsUrl);
      this._socket = ws;
      const link = {
        ws, url, held: [], heldOverflow: false, live: false, ready: false, lastFrameAt: Date.now(),
        sentAcks: new Map(), // ref -> [sent at, ids], oldest first: ack frames not answered yet
        nextRef: 0,
      };
      let result = {};
      const timers = [];
      const openTimer = setTimeout(() => ws.close(), 10000); // no open or no pong within 10 s: a dead node
      timers.push(openTimer);
      const finish = (code, reason) => {
        timers.forEach((t) => { clearTimeout(t); clearInterval(t); });
        const wasLive = link.live;
        link.live = false;
        if (this._link === link) this._link = null;
        for (const [, ids] of link.sentAcks.values()) for (const id of ids) this._ack(id);
        link.sentAcks.clear();
        if (wasLive) this._emitEvent("disconnected", { url, code, reason });
        resolve({ ...result, code, reason, stable: wasLive });
      };
      ws.onopen = () => {
        ws.send(PING);
        timers.push(setInterval(() => {
          if (Date.now() - link.lastFrameAt > 2 * this._pingIntervalMs) ws.close(); // half-open
          else if (ws.readyState === 1) ws.send(PING);
        }, this._pingIntervalMs));
      };
      ws.onmessage = (ev) => {
        link.lastFrameAt = Date.now();
        const frame = parseFrame(ev.data);
        if (frame instanceof NotiflowError) {
          this._emitEvent("error", frame); // reported and skipped: the socket and the client go on
        } else if (frame.type === "notification") {
          const { id, seq, event, collapse_key, payload, created_at } = frame;
          const item = { id, seq, event, payload, created_at };
          if (collapse_key != null) item.collapse_key = collapse_key;
          this._onLive(link, item);
        } else if (frame.type === "pong" && !link.ready) {
          link.ready = true;
          clearTimeout(openTimer);
          this._link = link;
          this._connected(link).catch((err) => {
            result = { error: err };
            ws.close(1000);
          });
        } else if (frame.type === "acked") {
          answered(link, frame.ref);
        } else if (frame.type === "error" && frame.code === "ack_failed") {
          for (const id of answered(link, frame.ref)) this._ack(id); // queued again here, not resent twice
        }
      };
      ws.onerror = () => {}; // a close event follows
      ws.onclose = (ev) => finish(ev.code, ev.reason);
      link.timers = timers;
    });
  }

  async _connected(link) {
    if (this._ackUpTo) {
      await this._request("POST", link.url, `/notifications/offline/${encodeURIComponent(this.userId)}/ack`,
        { up_to_seq: this._ackUpTo }); // taken before a restart, maybe never acknowledged
      this._ackUpTo = 0;
    }
    await this._catchUp(link);
    if (!link.ws || link.ws.readyState !== 1) return;
    link.live = true;
    this._refusals = 0;
    this.connects++;
    this._emitEvent("connected", { url: link.url });
    this._started?.resolve();
    this._started = null;
    let watermark = this.tracker.watermark;
    link.timers.push(setInterval(() => {
      // A gap that stays open for a whole period: read the queue below it (it may have gone offline).
      if (this.tracker.gaps && this.tracker.watermark === watermark && link.live && !link.held) {
        this._catchUp(link).catch((err) => this._emitEvent("error", err));
      }
      watermark = this.tracker.watermark;
    }, this._gapCheckMs));
  }

  _onLive(link, item) {
    if (link.held) {
      if (link.held.length < this._buffer) link.held.push(item);
      else link.heldOverflow = true; // still in the offline queue: the catch-up reads again
    } else if (this._queue.length >= this._buffer && !this.tracker.seen(item.id, item.seq)) {
      this._overflow = true; // the consumer is behind: read it from the queue once it caught up
    } else {
      this._emit(item);
    }
  }

  /** Every page of the offline queue after the watermark, merged with the held live frames in seq order. */
  async _catchUp(link) {
    const path = `/notifications/offline/${encodeURIComponent(this.userId)}`;
    for (;;) {
      link.held = link.held ?? [];
      link.heldOverflow = false;
      const known = link.held.reduce((m, n) => Math.max(m, n.seq), 0); // committed before the read
      let after = this.tracker.watermark;
      let highest = after;
      for (;;) {
        const page = await this._request("GET", link.url, `${path}?after_seq=${after}&limit=${this._pageSize}`);
        const rows = page.notifications;
        if (rows.length) highest = rows[rows.length - 1].seq;
        const last = page.next_after_seq == null;
        const live = link.held.filter((n) => last || n.seq <= highest);
        link.held = link.held.filter((n) => !last && n.seq > highest);
        for (const item of [...rows, ...live].sort((a, b) => a.seq - b.seq)) {
          while (this._queue.length >= this._buffer && !this._stopped) await new Promise((r) => this._roomWaiters.push(r));
          this._emit(item);
        }
        if (last) break;
        after = page.next_after_seq;
      }
      this.tracker.raiseTo(Math.max(highest, known));
      if (!link.heldOverflow) {
        link.held = null; // live from here on
        return;
      }
    }
  }

  _emit(item) {
    if (this.tracker.seen(item.id, item.seq)) {
      if (!this._untaken.has(item.id) && !this._noAck.has(item.id)) this._ack(item.id);
      return;
    }
    this.tracker.add(item.id, item.seq);
    if (this.collapser.stale(item)) { // a newer one of its key was received: replaced (collapse.js)
      this._ack(item.id);
      return;
    }
    this.collapser.received(item);
    this._untaken.add(item.id);
    this._queue.push(item);
    if (!this._pumpActive) this._pumping = this._pump();
  }

  async _pump() {
    // One loop, the flag cleared in its finally: in the same tick as the loop ends, so that an _emit
    // from then on starts a new pump (an await between the two would strand an item in the queue).
    this._pumpActive = true;
    try {
      while (this._queue.length && !this._stopped) {
        const n = this._queue.shift();
        this._untaken.delete(n.id);
        if (this.collapser.stale(n)) { // a newer one of its key came while this one waited: that one is next
          this._ack(n.id);
          continue;
        }
        this.collapser.taking(n);
        let ok = true;
        for (const fn of [...(this._listeners.get("notification") ?? [])]) {
          try {
            await fn(n);
          } catch (err) {
            ok = false;
            this._emitEvent("error", err);
          }
        }
        if (ok) this._ack(n.id);
        else {
          this._noAck.add(n.id);
          if (this._noAck.size > this._window) this._noAck.delete(this._noAck.values().next().value);
        }
        this._roomWaiters.splice(0).forEach((r) => r());
        if (this._overflow && !this._queue.length && this._link?.live && !this._link.held) {
          this._overflow = false;
          this._catchUp(this._link).catch((err) => this._emitEvent("error", err));
        }
      }
    } finally {
      this._pumpActive = false;
    }
  }

  // -- acknowledgements ----------------------------------------------------------------------------

  _ack(id) {
    this._acks.push(id);
    if (!this._ackTimer && !this._stopped) this._ackTimer = setTimeout(() => this._flushAcks(), this._ackIntervalMs);
  }

  async _flushAcks() {
    this._ackTimer = null;
    const link = this._link;
    try {
      if (link?.live && link.ws.readyState === 1) {
        while (this._acks.length) {
          const ids = this._acks.splice(0, MAX_ACK_IDS);
          const ref = link.nextRef++;
          link.ws.send(JSON.stringify({ type: "ack", ids, ref }));
          const now = Date.now();
          link.sentAcks.set(ref, [now, ids]);
          for (const [old, [sentAt]] of link.sentAcks) {
            if (old === ref || sentAt >= now - ACK_RESEND_MS) break;
            link.sentAcks.delete(old);
          }
        }
      } else {
        await this._flushHttp();
      }
    } catch (err) {
      this._emitEvent("error", new NotiflowError(`acks deferred: ${err.message}`));
      if (!this._ackTimer && !this._stopped) this._ackTimer = setTimeout(() => this._flushAcks(), 500);
    }
  }

  async _flushHttp() {
    const path = `/notifications/offline/${encodeURIComponent(this.userId)}/ack`;
    while (this._acks.length) {
      // Taken out before the request, put back if it fails: two flushes may overlap (a timer's and stop's,
      // or a new timer's while a POST is slow), and each must remove only the ids it sent. Removing "as
      // many as I sent" from the front once the POST answered dropped ids another flush had taken meanwhile.
      const ids = this._acks.splice(0, MAX_ACK_IDS);
      const base = this._link?.url ?? this.urls[this._index % this.urls.length];
      try {
        await this._request("POST", base, path, { ids });
      } catch (err) {
        this._acks.unshift(...ids);
        throw err;
      }
    }
  }

  async _request(method, base, path, body) {
    const token = await this._tokenNow();
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    // One deadline for the whole exchange: the signal also aborts reading the body (resp.json()).
    const signal = timeoutSignal(this._requestTimeoutMs);
    let resp;
    try {
      resp = await this._fetch(base + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal,
      });
      return await this._answer(method, path, resp);
    } catch (err) {
      if (err instanceof NotiflowError) throw err;
      const why = signal.aborted ? `no answer within ${this._requestTimeoutMs} ms` : err.message;
      throw new NotiflowError(`${method} ${base}${path}: ${why}`);
    }
  }

  async _answer(method, path, resp) {
    if (resp.status === 401 || resp.status === 403) {
      throw new NotiflowError(`${method} ${path} answered ${resp.status}`, { code: resp.status, fatal: resp.status === 403 });
    }
    if (resp.status >= 400 && resp.status < 500 && resp.status !== 429) {
      throw new NotiflowError(`${method} ${path} answered ${resp.status}: ${await resp.text()}`, { code: resp.status, fatal: true });
    }
    if (!resp.ok) throw new NotiflowError(`${method} ${path} answered ${resp.status}`, { code: resp.status });
    return resp.json();
  }
}
