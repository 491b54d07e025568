"""python3 asyncio: a loop with call_later timers and an asyncio.Queue fed
by a thread through call_soon_threadsafe. Prints:
  READY pid=PID   once both run
  TICK n          from a call_later chain, every 100 ms
  GOT i           each item the thread put in the queue (every 150 ms)
"""
import asyncio
import os
import threading
import time


async def main():
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    def feeder():
        i = 0
        while True:
            i += 1
            loop.call_soon_threadsafe(queue.put_nowait, i)
            time.sleep(0.15)

    n = 0

    def tick():
        nonlocal n
        n += 1
        print("TICK", n, flush=True)
        loop.call_later(0.1, tick)

    threading.Thread(target=feeder, name="feeder", daemon=True).start()
    loop.call_later(0.1, tick)
    print("READY pid=%d" % os.getpid(), flush=True)
    while True:
        item = await queue.get()
        print("GOT", item, flush=True)


asyncio.run(main())
