"""The gateway's fan-out path in one process, without the network: a Pub/Sub message -> Hub.deliver -> each
socket's buffer -> each socket's sending task -> an ASGI send that only counts bytes (the server's frame
encoding and socket write are not in it) -> the send meter. Prints the thread CPU nanoseconds per delivery (best
and median of the rounds): a shared machine's other load does not count. With --acks, the way back instead:
each socket's ack frame (text, as ASGI hands it over) -> ws._Reader -> the group commit (a Batcher whose flush
does nothing) -> settled; nanoseconds per ack frame.

    .venv/bin/python loadtests/hub_fanout.py                  # 500 sockets, 10 notifications per message
    .venv/bin/python loadtests/hub_fanout.py --per-message 1  # one frame per socket per iteration
    .venv/bin/python loadtests/hub_fanout.py --acks           # one ack frame (one id) per socket per round
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from datetime import UTC, datetime

import orjson
import uvloop

from notiflow.batching import Batcher
from notiflow.frames import FrameTemplate, encode_batch, frame_template
from notiflow.gateway.hub import Connection, Hub
from notiflow.gateway.ws import _Reader


class CountingSend:
    """Stands in for a socket's ASGI sends (gateway/ws.py's ``_send``): counts the bytes of the frames."""

    def __init__(self) -> None:
        self.bytes = 0

    async def __call__(self, frames: list[str]) -> bool:
        for frame in frames:
            self.bytes += len(frame)
        return True


async def measure(sockets: int, per_message: int, rounds: int) -> dict[str, float]:
    transport = CountingSend()
    hub = Hub()
    users = [f"u{i}" for i in range(sockets)]
    for user in users:
        hub.add(Connection(user, 10_000, lambda code: None, transport))
    created = datetime.now(UTC)
    batch: dict[FrameTemplate, list[tuple[str, int]]] = {}
    for k in range(per_message):
        payload = f'{{"id": {k}, "ts": 1765090000.0, "body": "{"x" * 100}"}}'
        batch[frame_template(uuid.uuid4(), "bench", payload, created)] = [(u, 1000 + k) for u in users]
    message = encode_batch(batch)
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.thread_time_ns()
        hub.deliver(message)
        await asyncio.sleep(0)  # the sending tasks run in the next iterations
        await asyncio.sleep(0)
        samples.append((time.thread_time_ns() - start) / (sockets * per_message))
    samples.sort()
    assert transport.bytes > 0
    return {"best_ns": round(samples[0]), "median_ns": round(samples[len(samples) // 2])}


async def measure_acks(sockets: int, ids: int, rounds: int) -> dict[str, float]:
    async def flush(frames: list[tuple[str, list[str]]]) -> list[int | BaseException]:
        return [len(i) for _, i in frames]

    batcher: Batcher[tuple[str, list[str]], int] = Batcher(flush, max_batch=1_000_000, name="acks")
    batcher.start()
    conns = [Connection(f"u{i}", 1000, lambda code: None, CountingSend()) for i in range(sockets)]
    readers = [_Reader(c, lambda user, i: batcher.enqueue([(user, i)]), 1000, 1_000_000) for c in conns]
    texts = [orjson.dumps({"type": "ack", "ids": [str(uuid.uuid4()) for _ in range(ids)]}).decode() for _ in conns]
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.thread_time_ns()
        for reader, text in zip(readers, texts, strict=True):
            reader(text)
        for _ in range(4):  # the flush, then the futures' callbacks
            await asyncio.sleep(0)
        samples.append((time.thread_time_ns() - start) / sockets)
    await batcher.close(1.0)
    assert all(c.acks_in_flight == 0 for c in conns), "acks not settled"
    samples.sort()
    return {"best_ns": round(samples[0]), "median_ns": round(samples[len(samples) // 2])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockets", type=int, default=500)
    p.add_argument("--per-message", type=int, default=10, help="notifications per Pub/Sub message (default 10)")
    p.add_argument("--rounds", type=int, default=80)
    p.add_argument("--acks", action="store_true", help="the ack frames' path instead (--per-message: ids per frame)")
    args = p.parse_args()
    if args.acks:
        result = uvloop.run(measure_acks(args.sockets, args.per_message, args.rounds))
        print(f"{args.sockets} sockets, ack frames of {args.per_message} ids: thread CPU per frame "
              f"best {result['best_ns']} ns, median {result['median_ns']} ns")
        return
    result = uvloop.run(measure(args.sockets, args.per_message, args.rounds))
    print(f"{args.sockets} sockets, {args.per_message} per message: thread CPU per delivery "
          f"best {result['best_ns']} ns, median {result['median_ns']} ns")


if __name__ == "__main__":
    main()
