#!/usr/bin/env python3
"""One measured run: start smtp-source, wait for it, then wait until the sink has counted TARGET
messages. Prints "ACCEPT_SECONDS TOTAL_SECONDS" (both from the start of smtp-source).

usage: measure.py COUNTFILE TARGET TIMEOUT_SECONDS smtp-source ARGS...

COUNTFILE is the stdout of `smtp-sink -c`: counters "sess=N quit=N mesg=N" rewritten after every
event, separated by \\r. Only the file's tail is read (every 10 ms), so polling costs next to
nothing on the machine under test. A record cut short at the end can only read low, never high.
"""

import os
import re
import subprocess
import sys
import time

MESG = re.compile(rb"mesg=(\d+)")


def count(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read()
    except FileNotFoundError:
        return 0
    found = MESG.findall(tail)
    return int(found[-1]) if found else 0


def main():
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    countfile, target, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    source = sys.argv[4:]
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(source)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"smtp-source did not finish within {timeout:.0f} s", file=sys.stderr)
        sys.exit(1)
    accepted = time.monotonic() - start
    if rc != 0:
        print(f"smtp-source exited with status {rc}", file=sys.stderr)
        sys.exit(1)
    while count(countfile) < target:
        if time.monotonic() > deadline:
            print(f"the sink counted {count(countfile)} of {target} within {timeout:.0f} s", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.01)
    total = time.monotonic() - start
    print(f"{accepted:.3f} {total:.3f}")


if __name__ == "__main__":
    main()
