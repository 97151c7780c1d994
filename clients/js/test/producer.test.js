// The Producer: its retry rules against a scripted fetch, then against a real stack: answers lost after their
// commit (a TCP proxy cuts every third answer) and a gateway SIGKILLed while sends go to it. Every
// notification is accepted exactly once: the retries carry the same idempotency keys.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";

import {
  IdempotencyKeyReused, InvalidNotification, NotAllowed, OutcomeUnknown, Producer, Unavailable, notification,
  topicNotification,
} from "../src/index.js";
import { startStack, uniqueUser } from "./stack.js";

const OK = { id: "00000000-0000-0000-0000-000000000001", status: "accepted", recipients: 1 };
const json = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers });
const error = (status, code, retryAfter, details = null) =>
  json(status, { error: { code, message: code, details } }, retryAfter ? { "retry-after": retryAfter } : {});
const refused = () => Object.assign(new TypeError("fetch failed"), { cause: { code: "ECONNREFUSED" } });
const reset = () => Object.assign(new TypeError("fetch failed"), { cause: { code: "ECONNRESET" } });

/** A fetch answering from `answers` in order (a function is called with the request; an Error is thrown). */
function script(...answers) {
  const s = { requests: [], slept: [] };
  s.fetch = async (url, init) => {
    s.requests.push({ url, init, body: init.body === undefined ? null : JSON.parse(init.body) });
    let answer = answers.length ? answers.shift() : json(202, OK);
    if (typeof answer === "function") answer = answer(init);
    if (answer instanceof Error) throw answer;
    return answer;
  };
  s.producer = (options = {}) => new Producer({
    urls: ["http://a"], fetch: s.fetch, sleep: async (ms) => { s.slept.push(ms); }, ...options,
  });
  s.keys = () => s.requests.map((r) => r.init.headers["idempotency-key"]);
  return s;
}

test("429 waits at least Retry-After and keeps the key", async () => {
  const s = script(error(429, "rate_limited", "3"));
  assert.deepEqual(await s.producer().send("alice", "e", { n: 1 }), OK);
  assert.equal(s.requests.length, 2);
  assert.ok(s.slept[0] >= 3000);
  assert.match(s.keys()[0], /^auto-/);
  assert.equal(s.keys()[0], s.keys()[1]);
  assert.deepEqual(s.requests[0].body, { user_id: "alice", event: "e", payload: { n: 1 } });
});

test("outcome_unknown, a refused and a reset connection are retried elsewhere with the same key", async () => {
  const s = script(refused(), error(503, "outcome_unknown", "1"), reset());
  await s.producer({ urls: ["http://a", "http://b"] }).send(["alice", "bob"], "e", {}, { idempotencyKey: "mine" });
  assert.deepEqual(s.requests.map((r) => new URL(r.url).host), ["a", "b", "a", "b"]);
  assert.deepEqual(s.keys(), ["mine", "mine", "mine", "mine"]);
  assert.ok(s.slept[1] >= 1000);
});

test("other 4xx throw typed errors at once", async () => {
  for (const [answer, kind] of [[error(422, "invalid_request"), InvalidNotification],
    [error(422, "idempotency_key_reused"), IdempotencyKeyReused], [error(403, "forbidden"), NotAllowed]]) {
    const s = script(answer);
    await assert.rejects(s.producer({ token: "nf_key" }).send("alice", "e"), (err) => err instanceof kind && err.fatal);
    assert.equal(s.requests.length, 1);
    assert.equal(s.requests[0].init.headers.authorization, "Bearer nf_key");
  }
});

test("giving up says whether the notification may exist", async () => {
  const unavailable = script(error(503, "unavailable"), error(503, "unavailable"));
  await assert.rejects(unavailable.producer({ maxAttempts: 2 }).send("a", "e"),
    (err) => err instanceof Unavailable && !(err instanceof OutcomeUnknown));
  const unknown = script(reset(), error(503, "unavailable"));
  await assert.rejects(unknown.producer({ maxAttempts: 2 }).send("a", "e", {}, { idempotencyKey: "k1" }),
    (err) => err instanceof OutcomeUnknown && err.idempotencyKey === "k1");
  const slow = script(error(429, "backlog_full", "30"));
  await assert.rejects(slow.producer({ deadlineMs: 20000 }).send("a", "e"), Unavailable);
  assert.deepEqual(slow.slept, []); // waiting 30 s would pass the deadline
});

test("a request without an answer times out and is retried", async () => {
  const hang = (init) => new Promise((_, fail) => init.signal.addEventListener("abort", () => fail(init.signal.reason)));
  const s = script(hang);
  assert.deepEqual(await s.producer({ requestTimeoutMs: 50 }).send("a", "e"), OK);
  assert.equal(s.keys()[0], s.keys()[1]);
});

test("sendMany chunks to the batch limit, keys every item and splits over_ingest_burst", async () => {
  const batch = (init) => json(202, { results: JSON.parse(init.body).notifications.map(() => OK) });
  const items = Array.from({ length: 2500 }, (_, i) => notification(`u${i}`, "e", { i }));
  items[7].idempotency_key = "caller-7";
  const s = script(batch, batch, batch);
  assert.equal((await s.producer().sendMany(items)).length, 2500);
  assert.deepEqual(s.requests.map((r) => r.body.notifications.length), [1000, 1000, 500]);
  const sent = s.requests.flatMap((r) => r.body.notifications);
  assert.equal(sent[7].idempotency_key, "caller-7");
  assert.equal(new Set(sent.map((n) => n.idempotency_key)).size, 2500);
  assert.equal(items[0].idempotency_key, undefined);

  const reused = { error: { code: "idempotency_key_reused", message: "m", details: null } };
  const split = script(error(413, "over_ingest_burst"), json(202, { results: [OK, reused] }), batch);
  const results = await split.producer().sendMany(Array.from({ length: 4 }, () => notification("u", "e")));
  assert.deepEqual(split.requests.map((r) => r.body.notifications.length), [4, 2, 2]);
  assert.ok(results[1] instanceof IdempotencyKeyReused && results.length === 4);

  const bad = script(batch, error(422, "invalid_request", null, [{ index: 3 }]));
  await assert.rejects(bad.producer({ batchSize: 10 }).sendMany(Array.from({ length: 20 }, () => notification("u", "e"))),
    (err) => err instanceof InvalidNotification && err.details[0].index === 13 && err.accepted.length === 10);
});

const TOPIC_OK = { ...OK, recipients: null, topic: "news" };

test("sendTopic and statusUrl: the body has exactly one recipient form, the answer keeps the topic", async () => {
  const s = script(error(429, "rate_limited", "2"), json(202, TOPIC_OK), json(202, OK));
  const p = s.producer();
  assert.deepEqual(await p.sendTopic("news", "e", { n: 1 }, { statusUrl: "https://r.example/s", collapseKey: "k" }),
    TOPIC_OK);
  assert.equal((await p.send("alice", "e", {}, { statusUrl: "https://r.example/s" })).recipients, 1);
  assert.deepEqual(s.requests[0].body,
    { topic: "news", event: "e", payload: { n: 1 }, status_url: "https://r.example/s", collapse_key: "k" });
  assert.deepEqual(s.requests[1].body, s.requests[0].body);
  assert.equal(s.keys()[0], s.keys()[1]);
  assert.ok(s.slept[0] >= 2000);
  assert.deepEqual(s.requests[2].body, { user_id: "alice", event: "e", payload: {}, status_url: "https://r.example/s" });
  assert.deepEqual(topicNotification("t", "e", {}, { idempotencyKey: "k" }),
    { topic: "t", event: "e", payload: {}, idempotency_key: "k" });
});

test("subscribe and unsubscribe are retried like sends, with the path escaped", async () => {
  const s = script(refused(), error(503, "unavailable", "1"), new Response(null, { status: 204 }),
    error(429, "rate_limited", "3"), new Response(null, { status: 204 }));
  const p = s.producer({ urls: ["http://a", "http://b"] });
  assert.equal(await p.subscribe("sports news#1?", "al ice"), undefined);
  assert.equal(await p.unsubscribe("sports news#1?", "al ice"), undefined);
  assert.deepEqual(s.requests.map((r) => r.init.method), ["PUT", "PUT", "PUT", "DELETE", "DELETE"]);
  assert.deepEqual(s.requests.map((r) => new URL(r.url).host), ["a", "b", "a", "a", "a"]);
  assert.equal(new URL(s.requests[0].url).pathname, "/topics/sports%20news%231%3F/subscribers/al%20ice");
  assert.ok(s.requests.every((r) => r.body === null && r.init.headers["idempotency-key"] === undefined));
  assert.ok(s.slept[1] >= 1000 && s.slept[2] >= 3000);
});

test("subscribers pages through nextAfter", async () => {
  const page = (init, url) => {
    const params = new URL(url).searchParams;
    assert.equal(init.method, "GET");
    const rest = ["a", "b", "c", "d", "e"].filter((u) => u > params.get("after")).slice(0, Number(params.get("limit")));
    return json(200, { topic: "t", subscribers: rest, next_after: rest.at(-1) === "e" ? null : rest.at(-1) });
  };
  const urls = [];
  const s = script();
  const p = s.producer({ fetch: async (url, init) => { urls.push(url); return urls.length === 2 ? error(503, "store_busy", "0") : page(init, url); } });
  const seen = [];
  for await (const u of p.subscribers("t", { pageSize: 2 })) seen.push(u);
  assert.deepEqual(seen, ["a", "b", "c", "d", "e"]);
  assert.deepEqual(urls.map((u) => new URL(u).searchParams.get("after")), ["", "b", "b", "d"]);
  const one = await s.producer({ fetch: async (url, init) => page(init, url) }).subscribersPage("t", { after: "c", limit: 5 });
  assert.deepEqual(one, { topic: "t", subscribers: ["d", "e"], nextAfter: null });
});

test("subscribers stops when a page makes no progress", async () => {
  const stuck = () => json(200, { topic: "t", subscribers: ["a"], next_after: "a" });
  const s = script(stuck, stuck, stuck);
  const seen = [];
  for await (const u of s.producer().subscribers("t")) seen.push(u);
  assert.deepEqual(seen, ["a", "a"]);
  assert.equal(s.requests.length, 2);
});

test("topic calls that give up are Unavailable, a send that may exist OutcomeUnknown", async () => {
  const s = script(reset(), reset(), reset(), reset());
  const p = s.producer({ maxAttempts: 2 });
  await assert.rejects(p.unsubscribe("t", "a"), (err) => err instanceof Unavailable && !(err instanceof OutcomeUnknown));
  await assert.rejects(p.sendTopic("t", "e"), OutcomeUnknown);
});

test("a bad topic throws typed at once", async () => {
  for (const call of [(p) => p.subscribe("bad", "a"), (p) => p.unsubscribe("bad", "a"), (p) => p.subscribersPage("bad"),
    (p) => p.sendTopic("bad", "e")]) {
    const s = script(error(422, "invalid_topic"));
    await assert.rejects(call(s.producer()), (err) => err instanceof InvalidNotification && err.errorCode === "invalid_topic");
    assert.equal(s.requests.length, 1);
  }
});

// --- against a live stack ------------------------------------------------------------------------------

let stack;
before(async () => { stack = await startStack({ gateways: 2 }); }, { timeout: 150000 });
after(async () => { await stack?.stop(); });

/** Every (kind, i) in the users' offline queues, with how often it appears. */
async function accepted(base, users) {
  const seen = new Map();
  for (const user of users) {
    let afterSeq = 0;
    for (;;) {
      const page = await (await fetch(`${base}/notifications/offline/${user}?limit=1000&after_seq=${afterSeq}`)).json();
      for (const n of page.notifications) {
        const k = `${n.payload.kind}:${n.payload.i}`;
        seen.set(k, (seen.get(k) ?? 0) + 1);
      }
      if (page.next_after_seq === null) break;
      afterSeq = page.next_after_seq;
    }
  }
  return seen;
}

function assertOnce(seen, expected) {
  const duplicated = [...seen].filter(([, n]) => n > 1).map(([k]) => k);
  assert.deepEqual(duplicated, [], "accepted more than once");
  assert.deepEqual([...seen.keys()].sort(), [...expected].sort(), "lost or unexpected");
}

/** A TCP proxy that forwards requests and cuts the connection instead of passing on every third answer. */
async function answerEater(upstream) {
  const { port } = new URL(upstream);
  const state = { answers: 0, eaten: 0 };
  const server = net.createServer((client) => {
    const up = net.connect(Number(port), "127.0.0.1");
    client.on("data", (d) => up.write(d));
    up.on("data", (d) => {
      if (++state.answers % 3 === 0) {
        state.eaten++;
        client.destroy();
        up.destroy();
      } else client.write(d);
    });
    for (const [a, b] of [[client, up], [up, client]]) {
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${server.address().port}`;
  state.close = () => new Promise((resolve) => server.close(resolve));
  return state;
}

/** Whether notification `id` reaches `user`'s offline queue within `timeoutMs`. */
async function queued(base, user, id, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const page = await (await fetch(`${base}/notifications/offline/${encodeURIComponent(user)}?limit=1000`)).json();
    if (page.notifications.some((n) => n.id === id)) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

test("topics: subscribe, list, send to the topic, unsubscribe; typed errors", { timeout: 60000 }, async () => {
  const base = stack.urls[1];
  const p = new Producer({ urls: base });
  const topic = `${uniqueUser("js news #")}?`; // escaped in the path
  const people = Array.from({ length: 5 }, (_, i) => uniqueUser(`topic${i}`)).sort();
  for (const u of [...people, people[0]]) await p.subscribe(topic, u); // twice changes nothing
  const listed = [];
  for await (const u of p.subscribers(topic, { pageSize: 2 })) listed.push(u);
  assert.deepEqual(listed, people);
  assert.deepEqual(await p.subscribersPage(topic, { after: people[1], limit: 2 }),
    { topic, subscribers: people.slice(2, 4), nextAfter: people[3] });
  const gone = people[4];
  await p.unsubscribe(topic, gone);
  await p.unsubscribe(topic, gone);
  const left = [];
  for await (const u of p.subscribers(topic)) left.push(u);
  assert.deepEqual(left, people.slice(0, 4));

  const sent = await p.sendTopic(topic, "js.topic", { n: 1 });
  assert.equal(sent.recipients, null);
  assert.equal(sent.topic, topic);
  const [batched] = await p.sendMany([topicNotification(topic, "js.topic", { n: 2 })]);
  assert.equal(batched.topic, topic);
  for (const id of [sent.id, batched.id]) {
    for (const u of people.slice(0, 4)) assert.ok(await queued(base, u, id), `${u} never got ${id}`);
  }
  // One page expanded each send whole: the unsubscribed user has nothing.
  assert.deepEqual((await (await fetch(`${base}/notifications/offline/${encodeURIComponent(gone)}`)).json()).notifications, []);

  // statusUrl reaches the gateway: this stack allows no receipt host, so it is refused by name.
  await assert.rejects(p.sendTopic(topic, "js.topic", {}, { statusUrl: "https://receipts.example/s" }),
    (err) => err instanceof InvalidNotification && err.errorCode === "status_host_not_allowed");
  await assert.rejects(p.send(people[0], "js.topic", {}, { statusUrl: "https://receipts.example/s" }),
    (err) => err instanceof InvalidNotification && err.errorCode === "status_host_not_allowed");
  const before = p.attempts;
  await assert.rejects(p.subscribe("bad\u0001topic", "alice"),
    (err) => err instanceof InvalidNotification && err.status === 422 && err.errorCode === "invalid_topic");
  await assert.rejects(p.subscribersPage("bad\u0001topic"), (err) => err.errorCode === "invalid_topic");
  assert.equal(p.attempts, before + 2); // refused at once, not retried
});

test("answers lost after their commit are retried into no duplicate", { timeout: 60000 }, async () => {
  const survivor = stack.urls[1];
  const eater = await answerEater(survivor);
  const user = uniqueUser("eaten");
  try {
    const p = new Producer({ urls: eater.url, backoffBaseMs: 20, backoffCapMs: 200 });
    for (let i = 0; i < 30; i++) await p.send(user, "producer.test", { kind: "send", i });
    await p.sendMany(Array.from({ length: 30 }, (_, i) => notification(user, "producer.test", { kind: "many", i })));
    assert.ok(eater.eaten >= 5, "no answer was lost: the test proved nothing");
  } finally {
    await eater.close();
  }
  const expected = ["send", "many"].flatMap((k) => Array.from({ length: 30 }, (_, i) => `${k}:${i}`));
  assertOnce(await accepted(survivor, [user]), expected);
});

test("a gateway SIGKILLed mid-send: every notification accepted exactly once", { timeout: 90000 }, async () => {
  const [doomed, survivor] = stack.urls;
  const people = Array.from({ length: 10 }, (_, i) => uniqueUser(`producer${i}`));
  const p = new Producer({ urls: [doomed, survivor], backoffBaseMs: 50, backoffCapMs: 1000 });
  const sends = 300;
  let done = 0;
  let quarter;
  const reached = new Promise((resolve) => { quarter = resolve; });
  let next = 0;
  const worker = async () => {
    while (next < sends) {
      const i = next++;
      await p.send(people[i % 10], "producer.test", { kind: "send", i });
      if (++done >= sends / 4) quarter();
    }
  };
  const workers = Array.from({ length: 20 }, worker);
  await reached;
  await stack.kill("gateway-0");
  await Promise.all(workers);
  assert.ok(p.attempts > sends, "no send was in flight when the gateway died: the test proved nothing");
  assertOnce(await accepted(survivor, people), Array.from({ length: sends }, (_, i) => `send:${i}`));
  console.log(`${sends} sends, ${p.attempts - sends} retries, 0 lost, 0 duplicated`);
});
