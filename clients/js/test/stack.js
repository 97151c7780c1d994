// Starts a real notiflow stack (test/stack.py: DevStack with embedded Redis and PostgreSQL) for the tests.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The venv's python: NOTIFLOW_PYTHON, else the repository's .venv. */
export function python() {
  const venv = resolve(here, "../../../.venv/bin/python");
  return process.env.NOTIFLOW_PYTHON || (existsSync(venv) ? venv : "python3");
}

export async function startStack({ gateways = 2, timeoutMs = 120000 } = {}) {
  const child = spawn(python(), [resolve(here, "stack.py"), "--gateways", String(gateways)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  const queued = [];
  lines.on("line", (line) => {
    const msg = JSON.parse(line);
    const next = waiting.shift();
    if (next) next(msg);
    else queued.push(msg);
  });
  const exited = new Promise((resolveExit) => child.on("exit", resolveExit));
  const nextLine = () => {
    if (queued.length) return Promise.resolve(queued.shift());
    return new Promise((ok, fail) => {
      waiting.push(ok);
      exited.then((code) => fail(new Error(`test/stack.py exited with ${code}`)));
    });
  };
  let timer;
  const first = await Promise.race([
    nextLine(),
    new Promise((_, fail) => { timer = setTimeout(fail, timeoutMs, new Error("stack did not start in time")); }),
  ]).finally(() => clearTimeout(timer));
  const command = async (line) => {
    child.stdin.write(`${line}\n`);
    return nextLine();
  };
  return {
    urls: first.urls,
    kill: (name) => command(`kill ${name}`),
    start: (name) => command(`start ${name}`),
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}

/** POST one notification; its id. */
export async function notify(base, userId, payload = {}, extra = {}) {
  const resp = await fetch(`${base}/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: userId, event: "test.event", payload, ...extra }),
  });
  if (resp.status !== 202) throw new Error(`POST /notifications answered ${resp.status}: ${await resp.text()}`);
  return (await resp.json()).id;
}

export async function offlineIds(base, userId) {
  const resp = await fetch(`${base}/notifications/offline/${encodeURIComponent(userId)}?limit=1000`);
  return (await resp.json()).notifications.map((n) => n.id);
}

/** Poll `predicate` (sync or async) until it is truthy; fail with `message` after `timeoutMs`. */
export async function waitFor(predicate, { timeoutMs = 20000, message = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${message}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const uniqueUser = (tag) => `${tag}-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
