"""Opens N keep-alive connections to the gateway, sends one authorized GET on each, reads the
response, then holds every connection idle until stdin closes (or HOLD seconds pass).

Usage: idle_clients.py HOST PORT PATH AUTH_HEADER N HOLD
Prints "open N" once all connections are idle, then "closed" at the end. Used by memory.sh.
"""

import asyncio
import sys


async def one(host, port, request, sem):
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head[:60]!r}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await asyncio.wait_for(reader.readexactly(length), 10)
        return writer


async def main():
    host, port, path, auth, n, hold = sys.argv[1:7]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n\r\n".encode()
    )
    sem = asyncio.Semaphore(256)  # bounded concurrency while opening
    writers = await asyncio.gather(*(one(host, int(port), request, sem) for _ in range(int(n))))
    print(f"open {len(writers)}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), float(hold))
    except asyncio.TimeoutError:
        pass
    for w in writers:
        w.close()
    print("closed", flush=True)


asyncio.run(main())
