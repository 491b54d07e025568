#!/usr/bin/env python3
"""bench_py.py: the python3 workload of the roundtrip benchmark.

Imports 14 stdlib modules and uses each (with --numpy-mb N also numpy, and
an int64 array of N MB, all written), prints READY, then blocks in a read
of stdin. Commands, one per line:
  resume  prints "RESUMED t=<CLOCK_REALTIME ns>" as the first statement
          after the read returns; then reads every private writable area of
          its own memory through /proc/self/mem (so every stored page is
          touched) and prints "POPULATED t=<ns>"; then checks its state and
          prints "PASS bench_py.py ..." or "FAIL bench_py.py <reason>"
  check   the check alone
  quit    prints BYE and exits 0
"""

import os
import sys
import time

# The 14 stdlib modules.
import collections
import datetime
import decimal
import fractions
import functools
import hashlib
import itertools
import json
import pathlib
import random
import re
import statistics
import textwrap
import zlib

numpy_mb = 0
if len(sys.argv) == 3 and sys.argv[1] == "--numpy-mb":
    numpy_mb = int(sys.argv[2])
elif len(sys.argv) != 1:
    print("ERROR usage: bench_py.py [--numpy-mb N]", flush=True)
    sys.exit(2)


def state():
    """What the modules compute, recomputed at check time."""
    rng = random.Random(7)
    data = [rng.randint(0, 1000) for _ in range(2000)]
    return (
        collections.Counter(d % 10 for d in data).most_common(3),
        datetime.date(2024, 2, 29).isoformat(),
        str(decimal.Decimal(1) / decimal.Decimal(7)),
        str(fractions.Fraction(3, 4) + fractions.Fraction(1, 6)),
        functools.reduce(lambda a, b: a ^ b, data),
        hashlib.sha256(bytes(d % 256 for d in data)).hexdigest(),
        list(itertools.islice(itertools.accumulate(data), 5)),
        json.dumps({"k": data[:8]}, sort_keys=True),
        pathlib.PurePosixPath("/a/b/c.txt").suffix,
        re.findall(r"\d{3}", " ".join(map(str, data[:50]))),
        statistics.median(data),
        textwrap.wrap("lorem ipsum dolor sit amet " * 4, 20),
        zlib.crc32(bytes(d % 256 for d in data)),
    )


kept = state()
array = None
if numpy_mb:
    import numpy

    array = numpy.arange(numpy_mb * 1000 * 1000 // 8, dtype=numpy.int64)


def populate():
    """Read every private writable area of this process."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open("/proc/self/maps") as maps:
        areas = [line.split() for line in maps]
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        for fields in areas:
            perms = fields[1]
            if not (perms.startswith("rw") and perms[3] == "p"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            at = start
            while at < end:
                n = min(len(buf), end - at)
                try:
                    got = os.preadv(fd, [view[:n]], at)
                except OSError:
                    break
                if got <= 0:
                    break
                at += got
    finally:
        os.close(fd)


def check():
    if state() != kept:
        return "the modules' results changed"
    if array is not None:
        n = len(array)
        if int(array.sum()) != n * (n - 1) // 2 or int(array[n - 1]) != n - 1:
            return "the numpy array changed"
    return None


def report():
    reason = check()
    if reason:
        print(f"FAIL bench_py.py {reason}", flush=True)
    else:
        print(f"PASS bench_py.py pid={os.getpid()} modules=14", flush=True)


print(f"READY pid={os.getpid()} numpy_mb={numpy_mb}", flush=True)
pending = b""
while True:
    data = os.read(0, 4096)
    if not data:
        sys.exit(0)
    if data.startswith(b"resume\n") and not pending:
        # The first statement after the read the dump left it in.
        t = time.time_ns()
        print(f"RESUMED t={t}", flush=True)
        populate()
        print(f"POPULATED t={time.time_ns()}", flush=True)
        report()
        data = data[len(b"resume\n") :]
    pending += data
    while b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        if line == b"check":
            report()
        elif line == b"quit":
            print("BYE", flush=True)
            sys.exit(0)
