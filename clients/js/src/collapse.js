// Collapse keys on the client side, as the Python client does (platform/notiflow/client/collapse.py;
// docs/clients.md "Collapse keys"): the listener gets the newest notification of each key, and `replaces`
// names the id of the one of that key it got before.
//
// The gateway never lists or pushes a replaced notification once the newer one is committed, but a client can
// still meet an older one after a newer one (pushed just before the replacement, or waiting in the client's
// buffer when the newer one arrived). Per key, the highest seq received is kept; anything of that key with a
// lower seq is dropped (and acknowledged: harmless), on arrival and again when the listener would get it.
// Memory is bounded: the keys of the last `window` keyed notifications (Maps in insertion order, the oldest
// evicted).

export class Collapser {
  constructor(window = 10000) {
    this.window = window;
    this._newest = new Map(); // key -> highest seq received
    this._taken = new Map(); // key -> id last handed to the listener
  }

  /** True when a newer notification of `item`'s key was received: drop `item` (and acknowledge it). */
  stale(item) {
    const key = item.collapse_key;
    return key != null && (this._newest.get(key) ?? -1) > item.seq;
  }

  /** Note a notification handed to the buffer (after `stale` said no). */
  received(item) {
    const key = item.collapse_key;
    if (key != null) put(this._newest, key, Math.max(this._newest.get(key) ?? -1, item.seq), this.window);
  }

  /** The listener gets `item`: sets `replaces` to the id of the last one of its key it got. */
  taking(item) {
    const key = item.collapse_key;
    if (key == null) return;
    const before = this._taken.get(key);
    if (before !== undefined && before !== item.id) item.replaces = before;
    put(this._taken, key, item.id, this.window);
  }
}

function put(lru, key, value, window) {
  lru.delete(key);
  lru.set(key, value);
  while (lru.size > window) lru.delete(lru.keys().next().value);
}
