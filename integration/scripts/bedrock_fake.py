"""A stand-in for AWS Bedrock's runtime that checks every request's SigV4 signature.

Usage: bedrock_fake.py PORT REGION

moto's bedrock-runtime answers InvokeModel with `{}` and checks no signature, so this fake
does what the test needs: it recomputes each request's signature with botocore's own SigV4
signer (the one the AWS SDK for Python signs with) from the credentials it handed out, and
refuses a request whose signature, date, scope or session token is wrong, as Bedrock does
(403 with `x-amzn-ErrorType`).

It also serves as the ECS container credentials endpoint (`GET /creds`, what
AWS_CONTAINER_CREDENTIALS_FULL_URI points at): each fetch hands out a new key pair, valid
for 301 s, so a client that refreshes shows it by signing with the next key.

Answers: POST /model/{id}/converse, a Converse answer naming the model; /converse-stream,
the same in AWS's event-stream framing, a frame every 5 ms; a model id holding `throttle`
gets 429 ThrottlingException. GET /_journal lists what was received.
"""
import binascii
import datetime
import json
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

port, region = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
issued = {}  # access key id -> Credentials
journal = []


def issue():
    with lock:
        n = len(issued) + 1
        creds = Credentials(f"ASIAFAKE{n:012d}", f"secret-{n}-" + "x" * 24, f"session-token-{n}")
        issued[creds.access_key] = creds
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=301)
    return {
        "AccessKeyId": creds.access_key,
        "SecretAccessKey": creds.secret_key,
        "Token": creds.token,
        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def verify(handler, body):
    """The reason a request's signature is refused, or None when it holds."""
    auth = handler.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 Authorization header"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key, date, scope_region, service, terminal = fields["Credential"].split("/")
    creds = issued.get(key)
    if creds is None:
        return f"unknown access key {key}"
    if (scope_region, service, terminal) != (region, "bedrock", "aws4_request"):
        return f"wrong scope {scope_region}/{service}/{terminal}"
    stamp = handler.headers.get("X-Amz-Date", "")
    when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300:
        return "request time too skewed"
    if not stamp.startswith(date):
        return "scope date is not the request date"
    if handler.headers.get("X-Amz-Security-Token") != creds.token:
        return "wrong session token"
    signed = fields["SignedHeaders"].split(";")
    for required in ("host", "x-amz-date"):
        if required not in signed:
            return f"{required} is not signed"
    headers = {name: handler.headers.get(name, "") for name in signed}
    request = AWSRequest(method=handler.command, url=f"http://{headers['host']}{handler.path}",
                         headers=headers, data=body)
    request.context["timestamp"] = stamp
    signer = SigV4Auth(creds, "bedrock", region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != fields["Signature"]:
        return "signature mismatch"
    return None


def frame(event_type, payload):
    headers = b""
    for name, value in ((":message-type", "event"), (":event-type", event_type),
                        (":content-type", "application/json")):
        headers += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
    data = json.dumps(payload).encode()
    total = 12 + len(headers) + len(data) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + headers + data
    return message + struct.pack(">I", binascii.crc32(message))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, payload, extra=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/creds":
            return self.send_json(200, issue())
        if self.path == "/_journal":
            with lock:
                return self.send_json(200, journal)
        self.send_json(404, {"message": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        refused = verify(self, body)
        parts = self.path.split("/")
        model = urllib.parse.unquote(parts[2]) if len(parts) > 3 and parts[1] == "model" else ""
        entry = {
            "path": self.path,
            "model": model,
            "refused": refused,
            "access_key": self.headers.get("Authorization", "").split("Credential=")[-1].split("/")[0],
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": json.loads(body or b"null"),
        }
        with lock:
            journal.append(entry)
        if refused:
            return self.send_json(403, {"message": f"The request signature is not valid: {refused}"},
                                  [("x-amzn-ErrorType", "InvalidSignatureException:http://internal.amazon.com/")])
        if "throttle" in model:
            return self.send_json(429, {"message": "Too many requests, please wait before trying again."},
                                  [("x-amzn-ErrorType", "ThrottlingException:http://internal.amazon.com/")])
        usage = {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12}
        if parts[-1] == "converse":
            return self.send_json(200, {
                "output": {"message": {"role": "assistant", "content": [{"text": f"Hello from {model}"}]}},
                "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 5},
            })
        if parts[-1] != "converse-stream":
            return self.send_json(404, {"message": "unknown operation"})
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        frames = [frame("messageStart", {"role": "assistant"})]
        frames += [frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}})
                   for t in ("Hel", "lo", " from ", model)]
        frames += [frame("contentBlockStop", {"contentBlockIndex": 0}),
                   frame("messageStop", {"stopReason": "end_turn"}),
                   frame("metadata", {"usage": usage, "metrics": {"latencyMs": 5}})]
        for f in frames:
            # Cut each frame in two, so that the reader must join frames across chunks.
            for piece in (f[:7], f[7:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.005)
        self.wfile.write(b"0\r\n\r\n")


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
