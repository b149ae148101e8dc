#!/usr/bin/env python3
"""Opens N idle client connections to a PostgreSQL-speaking server and holds them.

Each connection sends a startup packet and waits for ReadyForQuery, so it is a logged-in,
idle client, exactly as an application's pooled connection that is doing nothing. Trust
authentication only (bench/run.sh runs both proxies with auth_type trust).

    idle_clients.py HOST PORT N USER DATABASE

Prints "ready N" once all N are logged in, then holds them until killed. On a failure it
prints "failed after K: REASON" and exits 1.
"""

import resource
import signal
import socket
import struct
import sys

PROTOCOL_3_0 = 196608
LOGIN_TIMEOUT = 30.0


def startup_packet(user: str, database: str) -> bytes:
    params = b""
    for key, value in (("user", user), ("database", database), ("application_name", "idle")):
        params += key.encode() + b"\0" + value.encode() + b"\0"
    body = struct.pack("!I", PROTOCOL_3_0) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def error_text(body: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}"


def login(host: str, port: int, packet: bytes) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=LOGIN_TIMEOUT)
    sock.sendall(packet)
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection during login")
        buf += data
        while len(buf) >= 5:
            tag, length = buf[:1], struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + length:
                break
            body, buf = buf[5 : 1 + length], buf[1 + length :]
            if tag == b"E":
                raise ConnectionError(error_text(body))
            if tag == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise ConnectionError("server asked for a password; trust auth expected")
            if tag == b"Z":
                sock.settimeout(None)
                return sock


def main() -> int:
    host, port, count, user, database = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 64), hard))
    packet = startup_packet(user, database)
    held = []
    for _ in range(count):
        try:
            held.append(login(host, port, packet))
        except (OSError, ConnectionError) as err:
            print(f"failed after {len(held)}: {err}", flush=True)
            return 1
    print(f"ready {len(held)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
