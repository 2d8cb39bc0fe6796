#!/usr/bin/env python3
"""A WebSocket client of `GET /api/v1/events`, written against the `websockets` package
(nobody here wrote it): connects with the node's bearer token, sends each message given
with --send, and prints every frame it receives as one JSON line until a frame matches
--until (a substring) or --timeout seconds pass (exit 3). For tests/tests/events.rs."""

import argparse
import asyncio
import json
import sys

import websockets


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--send", action="append", default=[])
    parser.add_argument("--until", required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"}
    async with websockets.connect(args.url, additional_headers=headers, max_size=1 << 20) as ws:
        for message in args.send:
            await ws.send(message)
        async def read() -> None:
            async for frame in ws:
                json.loads(frame)  # every frame is JSON
                print(frame, flush=True)
                if args.until in frame:
                    return
        try:
            await asyncio.wait_for(read(), timeout=args.timeout)
        except asyncio.TimeoutError:
            print(f"timed out after {args.timeout} s waiting for {args.until!r}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
