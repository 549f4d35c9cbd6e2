#!/usr/bin/env python3
"""How long ringmq takes to recover persistent sessions, and what they cost on disk.

Starts ringmq on a fresh data directory, connects SESSIONS persistent 3.1.1 clients (clean
session 0) that each subscribe to one topic at QoS 1 and leave, publishes MESSAGES QoS 1
messages of PAYLOAD bytes to it (SESSIONS x MESSAGES queued), stops the broker (SIGTERM,
or SIGKILL with --kill after a second of commits), then restarts it and measures the time
until it listens, the broker's own "data directory recovered" figure, the resident memory
after recovery, and the data directory's size per queued message.

Usage: tuning/recovery-time.py [--sessions 100000] [--messages 10] [--payload 64] [--kill]
       [--cores 1] [--durability interval] [--data-root /var/tmp]
"""
import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "ringmq")


def remaining_length(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def string(data):
    return len(data).to_bytes(2, "big") + data


def connect(client_id, clean):
    flags = 0x02 if clean else 0x00
    return packet(0x10, string(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + string(client_id))


def subscribe(topic):
    return packet(0x82, (1).to_bytes(2, "big") + string(topic) + bytes([1]))


def publish(topic, payload, packet_id):
    return packet(0x32, string(topic) + packet_id.to_bytes(2, "big") + payload)


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


async def one_session(port, n, topic):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect(f"recovery-{n}".encode(), clean=False))
    first, _ = await read_packet(reader)
    assert first == 0x20, first
    writer.write(subscribe(topic))
    first, _ = await read_packet(reader)
    assert first == 0x90, first
    writer.write(b"\xe0\x00")
    await writer.drain()
    writer.close()


async def make_sessions(port, sessions, topic, concurrency=400):
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(n):
        async with semaphore:
            await one_session(port, n, topic)

    await asyncio.gather(*(bounded(n) for n in range(sessions)))


async def publish_messages(port, topic, messages, payload):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect(b"recovery-publisher", clean=True))
    await read_packet(reader)
    for n in range(messages):
        writer.write(publish(topic, payload, n + 1))
        first, _ = await read_packet(reader)
        assert first == 0x40, first
    writer.close()


def start(args, data_dir):
    started = time.monotonic()
    process = subprocess.Popen(
        [BINARY, "--listen", "127.0.0.1:0", "--cores", args.cores, "--data-dir", data_dir, "--durability", args.durability,
         "--sys-interval-s", "0", "--log", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    listening = time.monotonic() - started
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    return process, port, listening


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--cores", default="1")
    parser.add_argument("--durability", default="interval")
    parser.add_argument("--data-root", default="/var/tmp")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="ringmq-recovery-", dir=args.data_root)
    topic = b"recovery/all"
    try:
        process, port, _ = start(args, data_dir)
        began = time.monotonic()
        asyncio.run(make_sessions(port, args.sessions, topic))
        asyncio.run(publish_messages(port, topic, args.messages, b"x" * args.payload))
        setup_s = time.monotonic() - began
        before_mib = resident_mib(process.pid)
        if args.kill:
            time.sleep(1.0)
            process.send_signal(signal.SIGKILL)
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        disk = sum(os.path.getsize(os.path.join(data_dir, name)) for name in os.listdir(data_dir))
        queued = args.sessions * args.messages

        process, port, listening_s = start(args, data_dir)
        after_mib = resident_mib(process.pid)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        recovered = re.search(r"data directory recovered.*", stderr)
        print(f"sessions {args.sessions:,}, queued messages {queued:,} of {args.payload} B, stop {'SIGKILL' if args.kill else 'SIGTERM'}, "
              f"--cores {args.cores}, --durability {args.durability}")
        print(f"  set-up {setup_s:.1f} s; resident before the stop {before_mib:.0f} MiB")
        print(f"  data directory {disk / 2**20:.1f} MiB: {disk / queued:.1f} bytes per queued message (all included)")
        print(f"  restart to listening {listening_s:.2f} s; resident after recovery {after_mib:.0f} MiB")
        print(f"  broker: {recovered.group(0) if recovered else 'no recovery line'}")
    finally:
        if os.environ.get("KEEP_DATA"):
            print(f"  kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
