#!/usr/bin/env python3
"""files.py: a Python victim that keeps files open across a dump.

Usage: files.py DIR. It opens DIR/log.txt for writing (a regular fd at a
growing offset, O_APPEND off), opens DIR/read.txt for reading and reads the
first line only (an fd at a mid-file offset), and maps DIR/shared.bin
MAP_SHARED (a shared file mapping it writes through). Every tick it
appends "line n" to the log (via os.write on its fd, no buffering) and
stores n into the shared page. It prints READY with its fds, then TICK n.

On the stdin line "check" it verifies that its fds still name the same
files at the offsets it expects, that the next line of read.txt is line 2,
and that the shared mapping and the file agree; then prints
"PASS files.py pid=.. tick=.." or "FAIL files.py <reason>". "quit": BYE.
"""

import mmap
import os
import select
import sys
import time

d = sys.argv[1]
log_fd = os.open(os.path.join(d, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
with open(os.path.join(d, "read.txt"), "w") as f:
    f.write("".join(f"read line {i}\n" for i in range(1, 100)))
read_fd = os.open(os.path.join(d, "read.txt"), os.O_RDONLY)
first = b""
while not first.endswith(b"\n"):
    first += os.read(read_fd, 1)
shared_path = os.path.join(d, "shared.bin")
with open(shared_path, "wb") as f:
    f.write(b"\0" * 4096)
shared_fd = os.open(shared_path, os.O_RDWR)
shared = mmap.mmap(shared_fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
os.close(shared_fd)

print(f"READY pid={os.getpid()} log_fd={log_fd} read_fd={read_fd} first={first.decode().strip()!r}", flush=True)
tick = 0
written = 0


def check():
    reasons = []
    if os.lseek(log_fd, 0, os.SEEK_CUR) != written:
        reasons.append(f"log offset {os.lseek(log_fd, 0, os.SEEK_CUR)} expected {written}")
    with open(os.path.join(d, "log.txt"), "rb") as f:
        lines = f.read().decode().splitlines()
    if lines != [f"line {i}" for i in range(1, tick + 1)]:
        reasons.append(f"log has {len(lines)} lines, last {lines[-1:]} (tick {tick})")
    nxt = b""
    while not nxt.endswith(b"\n"):
        nxt += os.read(read_fd, 1)
    if nxt != b"read line 2\n":
        reasons.append(f"read.txt continued with {nxt!r}")
    os.lseek(read_fd, len(first), os.SEEK_SET)
    with open(shared_path, "rb") as f:
        on_disk = int.from_bytes(f.read(8), "little")
    in_map = int.from_bytes(shared[:8], "little")
    if not on_disk == in_map == tick:
        reasons.append(f"shared mapping {in_map}, file {on_disk}, tick {tick}")
    if reasons:
        print("FAIL files.py " + "; ".join(reasons), flush=True)
    else:
        print(f"PASS files.py pid={os.getpid()} tick={tick}", flush=True)


while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.02)
    if ready:
        line = sys.stdin.readline()
        if not line:
            break
        if line.strip() == "check":
            check()
        elif line.strip() == "quit":
            print("BYE", flush=True)
            sys.exit(0)
    tick += 1
    data = f"line {tick}\n".encode()
    os.write(log_fd, data)
    written += len(data)
    shared[:8] = tick.to_bytes(8, "little")
    print(f"TICK {tick}", flush=True)
