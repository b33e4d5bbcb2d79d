"""Loaded by Python at start when this directory is on PYTHONPATH (tests only).

RAMPART_TEST_SOURCE=127.0.0.3: every IPv4 TCP connection is made from that address, so that
rampart sees the client as the test wants it seen (outside the VPC, say). Python clients
(httpx, requests, urllib3) all connect through `socket.socket.connect`.

RAMPART_TEST_SENT_LOG=PREFIX: every byte a socket sends is appended to PREFIX.<pid>.<n>,
one file per socket, so a test can compare what a client sent with what an upstream got.
"""
import itertools
import os
import socket
import threading

_source = os.environ.get("RAMPART_TEST_SOURCE")
_log = os.environ.get("RAMPART_TEST_SENT_LOG")
_counter = itertools.count()
_lock = threading.Lock()
_names = {}

_connect = socket.socket.connect
_sendall = socket.socket.sendall
_send = socket.socket.send


def _connect_from_source(self, address):
    if _source and self.family == socket.AF_INET and self.getsockname()[1] == 0:
        self.bind((_source, 0))
    return _connect(self, address)


def _record(self, data):
    with _lock:
        name = _names.get(id(self))
        if name is None:
            name = f"{_log}.{os.getpid()}.{next(_counter)}"
            _names[id(self)] = name
    with open(name, "ab") as f:
        f.write(bytes(data))


def _sendall_recorded(self, data, *args):
    _record(self, data)
    return _sendall(self, data, *args)


def _send_recorded(self, data, *args):
    sent = _send(self, data, *args)
    _record(self, memoryview(data)[:sent])
    return sent


if _source:
    socket.socket.connect = _connect_from_source
if _log:
    socket.socket.sendall = _sendall_recorded
    socket.socket.send = _send_recorded
