"""Peer transport throughput between two processes on loopback.

    python bench/transport_bench.py [--seconds 2] [--loop asyncio|uvloop] [--sizes 100,4096] [--burst 1000]

The parent process is the sender; it starts a receiver process (this file
with --role receive), each with its own `PeerTransport`. The receiver answers
once per event-loop iteration with the number of messages it has received so
far, over its own transport. The sender queues `--burst` messages per
event-loop iteration, as a consensus step would emit them; the sender keeps at most `WINDOW_MESSAGES_MAX`
messages and `WINDOW_BYTES_MAX` payload bytes unacknowledged, so the queues
never overflow and every message counted was delivered. Prints messages/s and
MB/s (payload bytes, 10^6) per payload size.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvorum.server.peer_transport import PeerTransport  # noqa: E402

CLUSTER_ID = "bench"
LOOPBACK = "127.0.0.1"
WINDOW_MESSAGES_MAX = 50_000
WINDOW_BYTES_MAX = 16 * 1024 * 1024
STARTUP_TIMEOUT_S = 10.0


def use_loop(name: str) -> None:
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def receive(sender_port: int) -> None:
    """The receiver: count messages, ack the running count once per loop iteration."""
    loop = asyncio.get_running_loop()
    received = 0
    ack_scheduled = False
    transport: PeerTransport

    def ack() -> None:
        nonlocal ack_scheduled
        ack_scheduled = False
        transport.send("sender", received.to_bytes(8, "big"))

    def on_message(sender: str, payload: bytes) -> None:
        nonlocal received, ack_scheduled
        if payload == b"stop":
            done.set()
            return
        received += 1
        if not ack_scheduled:
            ack_scheduled = True
            loop.call_soon(ack)

    done = asyncio.Event()
    transport = PeerTransport(
        "receiver", CLUSTER_ID, (LOOPBACK, 0), {"sender": (LOOPBACK, sender_port)}, on_message
    )
    await transport.start()
    print(transport.address[1], flush=True)
    await done.wait()
    await transport.stop()


async def send(seconds: float, sizes: list[int], burst: int, loop_name: str) -> None:
    acked = 0
    ack_event = asyncio.Event()

    def on_message(sender: str, payload: bytes) -> None:
        nonlocal acked
        acked = max(acked, int.from_bytes(payload, "big"))
        ack_event.set()

    transport = PeerTransport("sender", CLUSTER_ID, (LOOPBACK, 0), {}, on_message)
    await transport.start()
    command = [sys.executable, __file__, "--role", "receive", "--loop", loop_name]
    command += ["--sender-port", str(transport.address[1])]
    receiver = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        port_line = await asyncio.wait_for(asyncio.to_thread(receiver.stdout.readline), STARTUP_TIMEOUT_S)
        transport.set_peers({"receiver": (LOOPBACK, int(port_line))})
        await asyncio.wait_for(transport.wait_connected("receiver"), STARTUP_TIMEOUT_S)
        print(f"loop={loop_name} seconds={seconds} burst={burst} two processes on loopback")
        print(f"{'payload':>9} {'messages':>10} {'msg/s':>10} {'MB/s':>8} {'batch':>7} {'dropped':>7}")
        for size in sizes:
            ack_event.clear()
            start_acked = acked
            stats_before = transport.peer_stats("receiver")
            payload = b"p" * size
            window_messages = min(WINDOW_MESSAGES_MAX, max(1, WINDOW_BYTES_MAX // size))
            sent = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                room = window_messages - (sent - (acked - start_acked))
                if room > 0:
                    for _ in range(min(burst, room)):
                        transport.send("receiver", payload)
                    sent += min(burst, room)
                    await asyncio.sleep(0)
                else:
                    # Checked and cleared with no await in between: no ack is missed.
                    ack_event.clear()
                    await ack_event.wait()
            while acked - start_acked < sent:
                ack_event.clear()
                await ack_event.wait()
            elapsed = time.perf_counter() - started
            stats = transport.peer_stats("receiver")
            frames = stats.frames_sent - stats_before.frames_sent
            dropped = stats.messages_dropped - stats_before.messages_dropped
            rate = sent / elapsed
            batch = sent / max(frames, 1)
            print(f"{size:>9} {sent:>10} {rate:>10.0f} {rate * size / 1e6:>8.1f} {batch:>7.0f} {dropped:>7}")
        transport.send("receiver", b"stop")
        await asyncio.wait_for(asyncio.to_thread(receiver.wait), STARTUP_TIMEOUT_S)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        await transport.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="sending time per payload size")
    parser.add_argument("--sizes", default="100,4096", help="payload sizes in bytes, comma-separated")
    parser.add_argument("--burst", type=int, default=1000, help="messages queued per loop iteration")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--role", choices=["send", "receive"], default="send", help=argparse.SUPPRESS)
    parser.add_argument("--sender-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # At the end each side sees the other go away and redials it; those
    # warnings are expected here and would only clutter the table.
    logging.basicConfig(level=logging.ERROR)
    use_loop(args.loop)
    if args.role == "receive":
        asyncio.run(receive(args.sender_port))
    else:
        asyncio.run(send(args.seconds, [int(size) for size in args.sizes.split(",")], args.burst, args.loop))


if __name__ == "__main__":
    main()
