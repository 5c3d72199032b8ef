#!/usr/bin/env python3
"""Time from the end of DATA to the 250, as a client sees it.

usage: latency.py HOST PORT MESSAGES SESSIONS SIZE

SESSIONS connections send MESSAGES messages of SIZE bytes between them (MAIL, RCPT, DATA, the body,
then <CRLF>.<CRLF>; one connection carries many transactions, as a busy application's does). For
each message the clock runs from the moment the final "." line is written until the reply line
arrives: what the relay spends making the message durable before it answers. Every reply must be
250; anything else fails the run.

Prints "P50_MS P99_MS MAX_MS MESSAGES_PER_SECOND".
"""

import asyncio
import sys
import time


async def reply(reader):
    """One whole reply (multi-line aware); returns (code, text)."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def expect(reader, code):
    got, text = await reply(reader)
    if got != code:
        raise RuntimeError(f"expected {code}, got {text!r}")


async def session(host, port, count, body, samples):
    reader, writer = await asyncio.open_connection(host, port)
    await expect(reader, 220)
    writer.write(b"EHLO latency.bench.test\r\n")
    await expect(reader, 250)
    for _ in range(count):
        writer.write(b"MAIL FROM:<bench@src.bench.test>\r\nRCPT TO:<sink@dest.bench.test>\r\nDATA\r\n")
        await expect(reader, 250)
        await expect(reader, 250)
        await expect(reader, 354)
        writer.write(body)
        await writer.drain()
        start = time.perf_counter()
        writer.write(b".\r\n")
        await expect(reader, 250)
        samples.append(time.perf_counter() - start)
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()


def message(size):
    head = b"From: bench@src.bench.test\r\nTo: sink@dest.bench.test\r\nSubject: latency\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = head
    while len(body) < size:
        body += line
    return body


async def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port = sys.argv[1], int(sys.argv[2])
    messages, sessions, size = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    body = message(size)
    samples = []
    per = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    start = time.perf_counter()
    await asyncio.gather(*(session(host, port, n, body, samples) for n in per if n))
    elapsed = time.perf_counter() - start
    samples.sort()

    def pct(p):
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000

    print(f"{pct(0.50):.2f} {pct(0.99):.2f} {samples[-1] * 1000:.2f} {len(samples) / elapsed:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
