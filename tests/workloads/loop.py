#!/usr/bin/env python3
"""loop.py: a self-checking Python victim for crimg.

Prints READY, then "TICK n" every --interval-ms (default 10). It keeps a
list, a dict and a bytearray with known contents plus a running sum of the
ticks. On SIGUSR2 or the stdin line "check" it verifies them and prints
"PASS loop.py pid=<current pid> tick=<n>" or "FAIL loop.py <reason>".
"quit" on stdin prints BYE and exits 0.
"""

import os
import select
import signal
import sys
import time

INTERVAL_MS = 10
if len(sys.argv) == 3 and sys.argv[1] == "--interval-ms":
    INTERVAL_MS = int(sys.argv[2])
elif len(sys.argv) != 1:
    print("ERROR usage: loop.py [--interval-ms N]", flush=True)
    sys.exit(2)

# State whose contents can be recomputed from scratch at check time.
squares = [i * i for i in range(10000)]
names = {f"key{i}": i * 3 for i in range(1000)}
blob = bytearray((i * 7) & 0xFF for i in range(1 << 20))
tick = 0
tick_sum = 0  # 1 + 2 + ... + tick, kept incrementally
check_requested = False


def on_usr2(_signum, _frame):
    global check_requested
    check_requested = True


def check():
    global check_requested
    check_requested = False
    reasons = []
    if squares != [i * i for i in range(10000)]:
        reasons.append("list of squares changed")
    if names != {f"key{i}": i * 3 for i in range(1000)}:
        reasons.append("dict changed")
    for i in range(0, len(blob), 4093):
        if blob[i] != (i * 7) & 0xFF:
            reasons.append(f"bytearray[{i}] is {blob[i]}, expected {(i * 7) & 0xFF}")
            break
    if tick_sum != tick * (tick + 1) // 2:
        reasons.append(f"tick sum {tick_sum} does not match tick {tick}")
    if reasons:
        print("FAIL loop.py " + "; ".join(reasons), flush=True)
    else:
        print(f"PASS loop.py pid={os.getpid()} tick={tick}", flush=True)


signal.signal(signal.SIGUSR2, on_usr2)
stdin_open = True
pending = b""
print(f"READY pid={os.getpid()} interval_ms={INTERVAL_MS}", flush=True)
deadline = time.monotonic()
while True:
    deadline += INTERVAL_MS / 1000.0
    # Wait for the next tick, reading stdin commands meanwhile.
    while True:
        timeout = max(0.0, deadline - time.monotonic())
        fds = [0] if stdin_open else []
        ready, _, _ = select.select(fds, [], [], timeout)
        if ready:
            data = os.read(0, 4096)
            if not data:
                stdin_open = False
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line == b"check":
                    check()
                elif line == b"quit":
                    print("BYE", flush=True)
                    sys.exit(0)
        if check_requested:
            check()
        if time.monotonic() >= deadline:
            break
    tick += 1
    tick_sum += tick
    print(f"TICK {tick}", flush=True)
