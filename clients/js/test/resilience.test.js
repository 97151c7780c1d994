// The client against a broken world, with no stack: a gateway that never answers HTTP, frames that are not
// JSON, a network that comes back (the browser's `online` event), and de-duplication without a linear search.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { NotiflowClient, SeenTracker } from "../src/index.js";
import { waitFor } from "./stack.js";

const EMPTY_QUEUE = JSON.stringify({ user_id: "u", notifications: [], next_after_seq: null });

/**
 * A WebSocket class whose sockets run `script(socket)` once constructed. Handlers are called the way a
 * runtime calls them: an exception a handler throws is caught and kept in `socket.thrown` (in Node's `ws` it
 * would escape as an uncaught exception, in a browser it would go to window.onerror).
 */
function fakeSocketClass(script) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.thrown = [];
      sockets.push(this);
      setTimeout(() => script(this), 0);
    }

    deliver(handler, event) {
      try {
        this[handler]?.(event);
      } catch (err) {
        this.thrown.push(err);
      }
    }

    open() {
      this.readyState = 1;
      this.deliver("onopen", {});
    }

    message(data) {
      this.deliver("onmessage", { data });
    }

    send(data) {
      this.sent.push(data);
      if (JSON.parse(data).type === "ping") this.onPing?.();
    }

    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.deliver("onclose", { code, reason }), 0);
    }
  }
  return { FakeSocket, sockets };
}

test("an HTTP request that gets no answer fails after requestTimeoutMs and is reported", { timeout: 15000 }, async () => {
  // A gateway whose HTTP side accepts the request and never answers (a hung proxy, a half-dead node).
  const hung = [];
  const server = createServer((req, res) => hung.push(res));
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  const { FakeSocket } = fakeSocketClass((ws) => {
    ws.onPing = () => ws.message(JSON.stringify({ type: "pong" }));
    ws.open();
  });
  const errors = [];
  const c = new NotiflowClient({ urls: [base], userId: "u", requestTimeoutMs: 300, WebSocket: FakeSocket });
  c.on("error", (err) => errors.push(err));
  c.start().catch(() => {});
  try {
    // The catch-up's GET of the offline queue hangs: without a deadline the client waits for ever.
    await waitFor(() => errors.some((e) => /no answer within 300 ms/.test(e.message)), {
      timeoutMs: 10000, message: "the hung GET reported as timed out",
    });
    assert.ok(hung.length >= 1);
    assert.equal(c.url, null); // never live: the session was given up, not left waiting
  } finally {
    const stopping = c.stop();
    hung.forEach((res) => res.destroy());
    server.closeAllConnections();
    await stopping;
    await new Promise((resolve) => server.close(resolve));
  }
});

test("frames that are not JSON objects are reported and skipped; the socket goes on", { timeout: 10000 }, async () => {
  const { FakeSocket, sockets } = fakeSocketClass((ws) => {
    ws.onPing = () => {
      ws.onPing = null;
      for (const bad of ["not json{", "null", "[1,2]", "42"]) ws.message(bad);
      ws.message(JSON.stringify({ type: "pong" }));
    };
    ws.open();
  });
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return new Response(init.method === "GET" ? EMPTY_QUEUE : '{"acknowledged":1}', { status: 200 });
  };
  const errors = [];
  const got = [];
  const c = new NotiflowClient({ urls: ["http://127.0.0.1:9"], userId: "u", WebSocket: FakeSocket, fetch });
  c.on("error", (err) => errors.push(err));
  c.on("notification", (n) => { got.push(n.id); });
  await c.start();
  const [ws] = sockets;
  ws.message(Buffer.from("{broken"));
  ws.message(JSON.stringify({ type: "notification", id: "n1", seq: 1, event: "e", payload: {}, created_at: "t" }));
  await waitFor(() => got.length === 1, { message: "the good frame after the bad ones taken" });
  await c.stop();
  assert.deepEqual(ws.thrown, [], "nothing thrown into the socket's handler");
  assert.equal(errors.length, 5, errors.map((e) => e.message).join("; "));
  assert.ok(errors.every((e) => /^bad frame/.test(e.message)), errors.map((e) => e.message).join("; "));
  assert.deepEqual(got, ["n1"]);
  assert.ok(calls.length >= 2 && calls.every(({ init }) => init.signal instanceof AbortSignal),
    "every fetch carries an abort signal");
});

test("the browser's online event ends the reconnect backoff at once; stop removes the listener", { timeout: 15000 }, async () => {
  const target = new EventTarget();
  const listening = new Set();
  globalThis.addEventListener = (type, fn) => { listening.add(type); target.addEventListener(type, fn); };
  globalThis.removeEventListener = (type, fn) => { listening.delete(type); target.removeEventListener(type, fn); };
  // Every connection attempt fails (no network); the backoff after it is uniform(0, 1e9) ms.
  const { FakeSocket, sockets } = fakeSocketClass((ws) => ws.close(1006, "offline"));
  const c = new NotiflowClient({
    urls: ["http://127.0.0.1:9"], userId: "u", WebSocket: FakeSocket, backoffBaseMs: 1e9, backoffCapMs: 1e9,
  });
  c.start().catch(() => {});
  try {
    await waitFor(() => sockets.length === 1, { message: "first attempt" });
    await waitFor(() => {
      target.dispatchEvent(new Event("online"));
      return sockets.length >= 2;
    }, { timeoutMs: 5000, message: "a new attempt right after the online event" });
    assert.ok(listening.has("online"));
  } finally {
    await c.stop();
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
  assert.ok(!listening.has("online"), "stop removed the online listener");
});

test("each ack frame carries its own ref; a dead socket's unanswered acks are queued again, answered ones not", { timeout: 10000 }, async () => {
  const { FakeSocket, sockets } = fakeSocketClass((ws) => {
    ws.onPing = () => ws.message(JSON.stringify({ type: "pong" }));
    ws.open();
  });
  const fetch = async (url, init) => new Response(init.method === "GET" ? EMPTY_QUEUE : '{"acknowledged":1}', { status: 200 });
  // Acks are gathered for an hour: only the explicit flushes below send them.
  const c = new NotiflowClient({ urls: ["http://127.0.0.1:9"], userId: "u", WebSocket: FakeSocket, fetch, ackIntervalMs: 3600e3 });
  await c.start();
  const [ws] = sockets;
  for (const id of ["a", "b", "c"]) {
    c._ack(id);
    clearTimeout(c._ackTimer); // flushed here instead (an hour's timer would hold the test process)
    await c._flushAcks();
  }
  const acks = ws.sent.map((raw) => JSON.parse(raw)).filter((f) => f.type === "ack");
  assert.deepEqual(acks, [{ type: "ack", ids: ["a"], ref: 0 }, { type: "ack", ids: ["b"], ref: 1 }, { type: "ack", ids: ["c"], ref: 2 }]);
  ws.message(JSON.stringify({ type: "acked", ref: 0 }));
  ws.message(JSON.stringify({ type: "error", code: "ack_failed", message: "m", ref: 1 }));
  ws.message(JSON.stringify({ type: "acked", ref: 99 })); // not one of ours: changes nothing
  assert.deepEqual(c._acks, ["b"], "a failed ack is queued again");
  ws.close(1012);
  await waitFor(() => c._acks.length === 2, { message: "the unanswered ack queued again" });
  assert.deepEqual(c._acks, ["b", "c"], "the confirmed ack is not sent again");
  assert.deepEqual(ws.thrown, []);
  clearTimeout(c._ackTimer);
  await c.stop();
});

/** The tracker as it was, with array searches: the reference its answers must match. */
class ArrayTracker {
  constructor(afterSeq, window) {
    Object.assign(this, { watermark: afterSeq, window, above: [], ids: new Set() });
  }

  seen(id, seq) {
    return seq <= this.watermark || this.ids.has(id) || this.above.includes(seq);
  }

  add(id, seq) {
    this.ids.delete(id);
    this.ids.add(id);
    while (this.ids.size > this.window) this.ids.delete(this.ids.values().next().value);
    if (seq > this.watermark && !this.above.includes(seq)) {
      this.above.push(seq);
      this.above.sort((a, b) => a - b);
    }
    this.advance();
    while (this.above.length > this.window) this.raiseTo(this.above[0]);
  }

  raiseTo(seq) {
    if (seq > this.watermark) this.watermark = seq;
    this.advance();
  }

  advance() {
    while (this.above.length && this.above[0] <= this.watermark + 1) {
      this.watermark = Math.max(this.watermark, this.above.shift());
    }
  }
}

test("de-duplication searches no array, and answers as the array version did", () => {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (const window of [3, 50, 10000]) {
    const t = new SeenTracker(0, window);
    const ref = new ArrayTracker(0, window);
    for (let i = 0; i < 5000; i++) {
      const seq = 1 + Math.floor(random() * (i + 20)); // out of order, with repeats and gaps
      const id = `n${seq}`;
      assert.equal(t.seen(id, seq), ref.seen(id, seq), `seen(${seq}) at step ${i}, window ${window}`);
      if (random() < 0.02) {
        t.raiseTo(seq);
        ref.raiseTo(seq);
      } else {
        t.add(id, seq);
        ref.add(id, seq);
      }
      assert.equal(t.watermark, ref.watermark, `watermark at step ${i}, window ${window}`);
      assert.equal(t.gaps, ref.above.length > 0);
    }
  }
  // No linear search on the hot path: seen() and add() never call includes/indexOf on an array.
  const big = new SeenTracker(0, 100000);
  for (let seq = 2; seq < 20000; seq++) big.add(`n${seq}`, seq); // a gap at 1 holds 19,998 seqs above it
  const searches = [];
  const originals = { includes: Array.prototype.includes, indexOf: Array.prototype.indexOf };
  for (const name of Object.keys(originals)) {
    Array.prototype[name] = function spy(...args) {
      searches.push(`${name} over ${this.length}`);
      return originals[name].apply(this, args);
    };
  }
  try {
    for (let seq = 20000; seq < 20100; seq++) {
      big.seen(`n${seq}`, seq);
      big.add(`n${seq}`, seq);
    }
  } finally {
    Object.assign(Array.prototype, originals);
  }
  assert.deepEqual(searches.slice(0, 3), []);
  big.add("n1", 1);
  assert.equal(big.watermark, 20099);
  assert.ok(!big.gaps);
});
