// k6 scenario: retry amplification. Notifications whose `webhook_url` points at a downstream that always
// fails (SINK_URL answers 5xx, or nothing listens there).
//
// What it proves (SPEC I6), from what the platform records (`GET /notifications/{id}`, `GET /dlq`):
// - every webhook delivery reaches the DLQ (webhook_status `dead`, exactly one DLQ entry of channel
//   `webhook`) within its bound: the longest full-jitter backoff schedule plus 1.2 x the time the per-host
//   retry budget needs for all the retries, plus SLACK_S;
// - no delivery is attempted more than MAX_RETRIES + 1 times, and none goes dead before using them all;
// - the downstream never sees a retry storm: from the retries' recorded start times (attempt >= 2), the
//   busiest second stays within 2 x RETRY_RATE_PER_HOST and the mean rate within RETRY_RATE_PER_HOST + 10%.
//
//   PROFILE=ci BASE_URL=http://127.0.0.1:8000 SINK_URL=http://127.0.0.1:9999/fail MAX_RETRIES=3 \
//       RETRY_CAP_MS=400 k6 run scripts/k6/retry-storm.js                          # 40 deliveries
//   BASE_URL=... SINK_URL=... k6 run scripts/k6/retry-storm.js                    # default: 200 deliveries
//
// Parameters (environment): BASE_URL (one or more comma-separated gateway URLs, loopback only),
// PROFILE (`ci` or unset), USERS (deliveries: recipients, 10 per notification; ci 40, default 200),
// SINK_URL (the failing downstream, loopback only; required), MAX_RETRIES, RETRY_BASE_MS, RETRY_CAP_MS,
// RETRY_RATE_PER_HOST (what the platform was started with; defaults 3, 100, 400, 20), DURATION (longest
// wait for the DLQ in seconds; default: the computed bound).
//
// Platform settings assumed: NOTIFLOW_MAX_RETRIES, NOTIFLOW_RETRY_BASE_MS, NOTIFLOW_RETRY_CAP_MS and
// NOTIFLOW_WEBHOOK_RETRY_RATE_PER_HOST equal to the parameters above (a platform started with other values
// fails this run: that is the point), NOTIFLOW_WEBHOOK_ALLOWED_HOSTS allowing SINK_URL's host.
//
// Calibration: `make load` (ci profile: 40 deliveries, MAX_RETRIES 3, base 100 ms, cap 400 ms, 20/s), 4
// runs on the 2-core machine shared with ~7 busy sessions (load average 10-18: pessimistic): accepted -> DLQ
// max 5.8-8.6 s against a bound of 0.7 s schedule + 1.2 x 6 s budget + SLACK_S 8 s = 15.9 s; busiest second
// of retries 20-36 (bound 40), mean 15-18/s (bound 22). With the budget switched off the 120 retries land
// within about a second; attempts are gated exactly (MAX_RETRIES + 1, no more, no fewer).
// Default profile (200 deliveries, `python loadtests/gates.py --profile default`, load average 18): DLQ max
// 33.2 s (bound 0.7 + 36 + 8 = 44.7 s), busiest second 32, mean 18.3/s.
import { check, fail, sleep } from 'k6';
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { TREND_STATS, baseUrls, intParam, requireReady, runTag } from './lib.js';

const URLS = baseUrls();
const DELIVERIES = intParam('USERS', 40, 200);
const PER_NOTIFICATION = 10;
const MAX_RETRIES = intParam('MAX_RETRIES', 3, 3);
const BASE_MS = intParam('RETRY_BASE_MS', 100, 100);
const CAP_MS = intParam('RETRY_CAP_MS', 400, 400);
const RATE = intParam('RETRY_RATE_PER_HOST', 20, 20);
const SLACK_S = intParam('SLACK_S', 8, 8);
const SINK_URL = (__ENV.SINK_URL || '').replace(/\/+$/, '');
if (!/^http:\/\/(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?(\/.*)?$/.test(SINK_URL)) {
  throw new Error(`SINK_URL must be a loopback http URL of a failing downstream, got '${SINK_URL}'`);
}

// The longest schedule one delivery can have (each delay at its cap), plus the time the per-host budget
// needs to let every retry of the run through.
let scheduleMs = 0;
for (let k = 1; k <= MAX_RETRIES; k++) {
  scheduleMs += Math.min(CAP_MS, BASE_MS * 2 ** (k - 1));
}
const BUDGET_MS = Math.ceil((DELIVERIES * MAX_RETRIES * 1000) / RATE);
const BOUND_MS = scheduleMs + Math.ceil(1.2 * BUDGET_MS) + SLACK_S * 1000; // +20%: a slow worker uses less
const WAIT_S = intParam('DURATION', Math.ceil(BOUND_MS / 1000) + 10, Math.ceil(BOUND_MS / 1000) + 10);
// The budget is a fixed window per second at grant time, and a granted call may start a little later (the
// worker's webhook concurrency), so one recorded second can hold up to two windows' worth: the peak is held to
// twice the rate, and the mean over the whole retry period (retries / (span + 1 s)) to the rate plus 10%.
const PEAK_RATE = 2 * RATE;
const MEAN_RATE = 1.1 * RATE;

const toDlq = new Trend('dlq_latency', true); // accepted -> last attempt finished, per delivery
const attemptsT = new Trend('webhook_attempts');
const retryRate = new Trend('retry_rate_peak_per_s');
const retryRateMean = new Trend('retry_rate_mean_per_s');
const overBudget = new Counter('deliveries_over_attempt_budget');
const deadEarly = new Counter('deliveries_dead_before_budget');
const notDead = new Counter('deliveries_not_dead_in_time');
const dlqWrong = new Counter('deliveries_without_one_dlq_entry');
const deliveries = new Counter('deliveries');

export const options = {
  scenarios: {
    storm: { executor: 'shared-iterations', vus: 1, iterations: 1, maxDuration: `${WAIT_S + 60}s` },
  },
  thresholds: {
    checks: ['rate==1'],
    deliveries_over_attempt_budget: ['count==0'],
    deliveries_dead_before_budget: ['count==0'],
    deliveries_not_dead_in_time: ['count==0'],
    deliveries_without_one_dlq_entry: ['count==0'],
    deliveries: [`count>=${DELIVERIES}`],
    dlq_latency: [`max<${BOUND_MS}`],
    retry_rate_peak_per_s: [`max<=${PEAK_RATE}`],
    retry_rate_mean_per_s: [`max<=${MEAN_RATE}`],
    webhook_attempts: [`max<=${MAX_RETRIES + 1}`, `min>=${MAX_RETRIES + 1}`],
    http_req_failed: ['rate==0'],
  },
  summaryTrendStats: TREND_STATS,
};

const JSON_PARAMS = { headers: { 'Content-Type': 'application/json' }, timeout: '20s' };

/** ISO-8601 with microseconds (PostgreSQL's) to epoch milliseconds. */
function epochMs(iso) {
  return Date.parse(iso.replace(/(\.\d{3})\d+/, '$1'));
}

export function setup() {
  requireReady(URLS);
  return { users: DELIVERIES, run: runTag() };
}

export default function (data) {
  const url = URLS[0];
  const items = [];
  for (let i = 0; i < DELIVERIES; i += PER_NOTIFICATION) {
    const users = [];
    for (let j = i; j < Math.min(DELIVERIES, i + PER_NOTIFICATION); j++) {
      users.push(`k6retry-${data.run}-${j}`);
    }
    items.push({ user_ids: users, event: 'k6.retry', payload: { run: data.run }, webhook_url: `${SINK_URL}/${data.run}` });
  }
  // One POST each (the gateway batches concurrent requests into one commit itself).
  const ids = [];
  for (const item of items) {
    const res = http.post(`${url}/notifications`, JSON.stringify(item), {
      ...JSON_PARAMS, tags: { name: 'POST /notifications' },
    });
    if (!check(res, { 'notification accepted (202)': (r) => r.status === 202 })) {
      fail(`POST /notifications answered ${res.status}: ${res.body}`);
    }
    ids.push(res.json('id'));
  }

  // Wait until every webhook delivery is dead, or the wait runs out.
  const finalRows = {};
  const deadline = Date.now() + WAIT_S * 1000;
  let open = ids.slice();
  while (open.length && Date.now() < deadline) {
    const still = [];
    for (const id of open) {
      const r = http.get(`${url}/notifications/${id}?limit=${PER_NOTIFICATION}`, {
        timeout: '20s', tags: { name: 'GET /notifications/[id]' },
      });
      if (r.status !== 200) {
        still.push(id);
        continue;
      }
      const body = r.json();
      finalRows[id] = body;
      if (body.deliveries.some((d) => d.webhook_status !== 'dead')) {
        still.push(id);
      }
    }
    open = still;
    if (open.length) {
      sleep(0.5);
    }
  }

  const retryStarts = [];
  for (const id of ids) {
    const body = finalRows[id];
    if (!body) {
      notDead.add(1); // never read: counted once, whatever its recipients
      continue;
    }
    const createdMs = epochMs(body.created_at);
    for (const d of body.deliveries) {
      deliveries.add(1);
      const hooks = d.attempts.filter((a) => a.channel === 'webhook');
      attemptsT.add(hooks.length);
      if (hooks.length > MAX_RETRIES + 1) {
        overBudget.add(1);
      }
      if (d.webhook_status !== 'dead') {
        notDead.add(1);
        continue;
      }
      if (hooks.length < MAX_RETRIES + 1) {
        deadEarly.add(1);
      }
      const last = Math.max(...hooks.map((a) => epochMs(a.finished_at || a.started_at)));
      toDlq.add(last - createdMs);
      for (const a of hooks) {
        if (a.attempt >= 2) {
          retryStarts.push(epochMs(a.started_at));
        }
      }
      const dlq = http.get(`${url}/dlq?user_id=${encodeURIComponent(d.user_id)}&limit=10`, {
        timeout: '20s', tags: { name: 'GET /dlq' },
      });
      const entries = dlq.status === 200 ? dlq.json('entries').filter((e) => e.channel === 'webhook') : [];
      if (entries.length !== 1) {
        dlqWrong.add(1);
      }
    }
  }

  const perSecond = {};
  for (const t of retryStarts) {
    const s = Math.floor(t / 1000);
    perSecond[s] = (perSecond[s] || 0) + 1;
  }
  const counts = Object.values(perSecond);
  retryRate.add(counts.length ? Math.max(...counts) : 0);
  if (retryStarts.length > 1) {
    const spanS = (Math.max(...retryStarts) - Math.min(...retryStarts)) / 1000;
    retryRateMean.add(retryStarts.length / (spanS + 1));
  }
  check(null, { 'every delivery recorded': () => Object.keys(finalRows).length === ids.length });
}
