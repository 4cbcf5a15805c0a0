"""Sends GET requests to 127.0.0.1:PORT over 10 keep-alive connections, in lockstep
(one request in flight per connection), and prints how many got each status.

    python3 scripts/bench_requests.py PORT REQUESTS [CLIENTS [PREFIX]]

With CLIENTS (at most 65,536), request i carries `X-Forwarded-For: PREFIX.x.y`
(PREFIX: 10.0 unless given), the address of client i % CLIENTS: each client's
requests are spread over the whole run, as under a flood from that many addresses
behind a trusted proxy.
"""
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 0
prefix = sys.argv[4] if len(sys.argv) > 4 else "10.0"
if clients > 65536:
    sys.exit("at most 65,536 clients: one /16 of addresses")
plain = b"GET /api/items HTTP/1.1\r\nHost: api.test\r\nUser-Agent: bench\r\n\r\n"


def request(i):
    if not clients:
        return plain
    c = i % clients
    return (
        "GET /api/items HTTP/1.1\r\nHost: api.test\r\nUser-Agent: bench\r\n"
        f"X-Forwarded-For: {prefix}.{c // 256}.{c % 256}\r\n\r\n"
    ).encode()


conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
pending = [b""] * len(conns)
statuses = {}


def answer(i):
    buf = pending[i]
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").split("\r\n")
            length = next(
                (int(line.split(":", 1)[1]) for line in head[1:]
                 if line.lower().startswith("content-length:")),
                0,
            )
            if len(buf) >= end + 4 + length:
                pending[i] = buf[end + 4 + length:]
                return head[0].split(" ")[1]
        data = conns[i].recv(65536)
        if not data:
            sys.exit("connection closed")
        buf += data


sent = 0
while sent < n:
    batch = min(len(conns), n - sent)
    for i in range(batch):
        conns[i].sendall(request(sent + i))
    for i in range(batch):
        status = answer(i)
        statuses[status] = statuses.get(status, 0) + 1
    sent += batch
print(" ".join(f"{k}:{v}" for k, v in sorted(statuses.items())))
