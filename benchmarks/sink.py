"""The project's own fast SMTP sink, for when Postfix's smtp-sink cannot be installed.

Answers every command at once and discards data: it measures the sender, not the sink.
Optionally answers a share of transactions with 4xx or 5xx ("smart sink" mode), so retries
and bounces are part of what is measured, and keeps the first message it accepts in a file
(so a benchmark can check what was really sent: signature, tracking links).

    python -m benchmarks.sink PORT [SOFT_SHARE [HARD_SHARE [CAPTURE_FILE]]]
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path


class SinkProtocol(asyncio.Protocol):
    capture: Path | None = None  # class-wide: the first accepted message of any session

    def __init__(self, soft: float, hard: float) -> None:
        self.soft, self.hard = soft, hard
        self.buffer = b""
        self.in_data = False
        self.data: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if self.data is not None:
                        self.data.append(self.buffer[:-4])
                    self.buffer = self.buffer[-4:]
                    return
                if self.data is not None:
                    self.data.append(self.buffer[: end + 2])
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                roll = random.random()
                if roll < self.hard:
                    self.transport.write(b"550 5.1.1 sink says no such user\r\n")
                elif roll < self.hard + self.soft:
                    self.transport.write(b"451 4.3.0 sink says try later\r\n")
                else:
                    self._keep()
                    self.transport.write(b"250 2.0.0 queued\r\n")
                self.data = None
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.transport.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.in_data = True
                if SinkProtocol.capture is not None:
                    self.data = []
                self.transport.write(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 ok\r\n")

    def _keep(self) -> None:
        if self.data is None or SinkProtocol.capture is None:
            return
        message = b"".join(self.data).replace(b"\r\n..", b"\r\n.")  # undo dot-stuffing
        SinkProtocol.capture.write_bytes(message)
        SinkProtocol.capture = None


async def serve(port: int, soft: float = 0.0, hard: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(soft, hard), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    soft = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    hard = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    SinkProtocol.capture = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    try:
        import uvloop

        uvloop.run(serve(int(sys.argv[1]), soft, hard))
    except KeyboardInterrupt:
        pass
