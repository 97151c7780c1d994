// k6: WebSocket users that acknowledge what they receive, plus a producer that sends to them.
//
//   k6 run scripts/k6/ws.js                                       # against http://127.0.0.1:8000
//   BASE_URL=http://127.0.0.1:8000 WS_URL=ws://127.0.0.1:8001 SOCKETS=200 RATE=300 k6 run scripts/k6/ws.js
//
// Scenario `sockets`: SOCKETS VUs, each holds /ws/k6ws<VU> open for HOLD, acks every notification frame
// ({"type":"ack","ids":[id]}) and records the end-to-end latency from the producer's timestamp.
// Scenario `producer`: from CONNECT_S on (when the sockets are up), RATE POSTs/s to random connected
// users through BASE_URL; WS_URL may name another gateway node (cross-node routing).
// Knobs: BASE_URL, WS_URL (loopback only), SOCKETS (100), RATE (200), HOLD (20s), CONNECT_S (3),
// P99_MS (e2e threshold, 500).
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { setTimeout } from 'k6/timers';
import { WebSocket } from 'k6/experimental/websockets';

const LOOPBACK = /^(https?|wss?):\/\/(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$/;
const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
const WS_URL = (__ENV.WS_URL || BASE_URL.replace(/^http/, 'ws')).replace(/\/+$/, '');
for (const url of [BASE_URL, WS_URL]) {
  if (!LOOPBACK.test(url)) {
    throw new Error(`BASE_URL and WS_URL must be loopback addresses, got ${url}`);
  }
}
const SOCKETS = parseInt(__ENV.SOCKETS || '100', 10);
const RATE = parseInt(__ENV.RATE || '200', 10);
const HOLD_S = parseInt((__ENV.HOLD || '20s').replace(/s$/, ''), 10);
const CONNECT_S = parseInt(__ENV.CONNECT_S || '3', 10);
const P99_MS = parseInt(__ENV.P99_MS || '500', 10);
const PRODUCE_S = Math.max(1, HOLD_S - CONNECT_S - 3); // stop producing a little before the sockets close

const received = new Counter('ws_notifications_received');
const duplicates = new Counter('ws_notifications_duplicate');
const acksSent = new Counter('ws_acks_sent');
const closedEarly = new Counter('ws_closed_early');
const e2e = new Trend('ws_e2e_latency', true);
const accepted = new Counter('notifications_accepted');

export const options = {
  scenarios: {
    sockets: {
      executor: 'per-vu-iterations',
      exec: 'socket',
      vus: SOCKETS,
      iterations: 1,
      maxDuration: `${HOLD_S + 10}s`,
    },
    producer: {
      executor: 'constant-arrival-rate',
      exec: 'produce',
      startTime: `${CONNECT_S}s`,
      rate: RATE,
      timeUnit: '1s',
      duration: `${PRODUCE_S}s`,
      preAllocatedVUs: 20,
      maxVUs: 100,
    },
  },
  thresholds: {
    ws_e2e_latency: [`p(99)<${P99_MS}`],
    ws_closed_early: ['count==0'],
    ws_notifications_received: ['count>0'],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function socket() {
  const user = `k6ws${__VU}`;
  const seen = new Set();
  let closing = false;
  const ws = new WebSocket(`${WS_URL}/ws/${user}`);
  ws.onopen = () => {
    setTimeout(() => {
      closing = true;
      ws.close();
    }, HOLD_S * 1000);
  };
  ws.onmessage = (event) => {
    const now = Date.now();
    const frame = JSON.parse(event.data);
    if (frame.type !== 'notification') {
      return;
    }
    if (seen.has(frame.id)) {
      duplicates.add(1);
    } else {
      seen.add(frame.id);
      received.add(1);
      if (frame.payload && typeof frame.payload.sent_ms === 'number') {
        e2e.add(now - frame.payload.sent_ms);
      }
    }
    ws.send(JSON.stringify({ type: 'ack', ids: [frame.id] }));
    acksSent.add(1);
  };
  ws.onclose = () => {
    if (!closing) {
      closedEarly.add(1);
    }
  };
  ws.onerror = (e) => {
    console.error(`socket ${user}: ${e.error}`);
  };
}

export function produce() {
  const user = `k6ws${1 + Math.floor(Math.random() * SOCKETS)}`;
  const body = JSON.stringify({ user_id: user, event: 'k6.ws', payload: { sent_ms: Date.now() } });
  const res = http.post(`${BASE_URL}/notifications`, body, {
    headers: { 'Content-Type': 'application/json' },
    timeout: '10s',
    tags: { name: 'POST /notifications' },
  });
  if (check(res, { 'status is 202': (r) => r.status === 202 })) {
    accepted.add(1);
  }
}
