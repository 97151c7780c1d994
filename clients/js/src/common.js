// What the consumer client (index.js) and the producer (producer.js) share: the error root, the backoff and
// request deadlines.

/** An error of the client; `code` is the close code or HTTP status, `fatal` says the client gave up. */
export class NotiflowError extends Error {
  constructor(message, { code = null, fatal = false } = {}) {
    super(message);
    this.name = "NotiflowError";
    this.code = code;
    this.fatal = fatal;
  }
}

/** Full jitter: uniform(0, min(cap, base * 2**attempt)) milliseconds (notiflow.backoff). */
export function backoffMs(attempt, baseMs, capMs, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 52));
}

/** An AbortSignal that fires after `ms` (AbortSignal.timeout where it exists). */
export function timeoutSignal(ms) {
  if (typeof AbortSignal.timeout === "function") return AbortSignal.timeout(ms);
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error("timeout")), ms);
  return controller.signal;
}
