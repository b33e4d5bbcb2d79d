"""A stand-in for the Langfuse server (which cannot run here) for `make demo`: accepts every
request, answers 200 with an empty JSON object, and prints one JSON line per request
(method, path, content type and encoding, the SDK's version, body length) so that the demo can show what
arrived.

Usage: langfuse_standin.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        print(json.dumps({
            "method": self.command,
            "path": self.path,
            "content_type": self.headers.get("Content-Type"),
            "content_encoding": self.headers.get("Content-Encoding"),
            "sdk": self.headers.get("x-langfuse-sdk-version"),
            "bytes": len(body),
        }), flush=True)
        answer = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _record

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Recorder).serve_forever()
