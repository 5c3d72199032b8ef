#!/usr/bin/env python3
"""Resident memory at rest and with many idle client connections.

usage: idle.py HOST PORT CONNECTIONS PID

Reads the resident set size (VmRSS) of PID and of every process below it (Postfix runs one smtpd
process per connection under its master; smarthost is one process), then opens CONNECTIONS
connections, waits until each has its 220 banner, lets them sit idle for a moment and reads the
sizes again. Prints "REST_RSS IDLE_RSS IDLE_PSS PROCESSES CONNECTED GREETED" (KiB; PSS: shared pages
divided among the processes that share them): CONNECTED counts the
connections the server took before its listen queue was full (connecting stops at the first
that times out), GREETED those that got their banner (a server with a process limit greets fewer).
"""

import os
import socket
import sys
import time
import resource


def children():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def memory_tree(pid):
    """(RSS KiB, PSS KiB, processes) of pid and its descendants. PSS shares each page among the
    processes that map it, so a server of many processes is not charged its libraries many times."""
    kids = children()
    rss, pss, count, todo = 0, 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                        count += 1
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    return rss, pss, count


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    rest, _, _ = memory_tree(pid)
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=3)
        except OSError:
            # The server stopped taking connections (its listen queue is full): measure those open.
            break
        s.setblocking(False)
        socks.append(s)
    greeted = set()
    deadline = time.monotonic() + 20
    while len(greeted) < len(socks) and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in greeted:
                continue
            try:
                if s.recv(512).startswith(b"220"):
                    greeted.add(i)
            except BlockingIOError:
                pass
        time.sleep(0.05)
    time.sleep(2)
    idle, idle_pss, procs = memory_tree(pid)
    print(f"{rest} {idle} {idle_pss} {procs} {len(socks)} {len(greeted)}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
