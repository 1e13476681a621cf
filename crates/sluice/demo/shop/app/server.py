"""The demo shop: a small HTTP service that Sluice builds, tests, deploys
and watches. It reads its port and directories from the environment Sluice
gives each instance."""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import settings
import shop


def greeting():
    path = os.path.join(os.environ.get("SLUICE_CONFIG_DIR", ""), "app.toml")
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("greeting"):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "hello"


def products():
    path = os.path.join(os.environ.get("DATA_DIR", "."), "products.json")
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return []


GREETING = greeting()
PRODUCTS = products()
CART = {"tea": 2, "mug": 1}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per answer: headers and body apart meet Nagle and delayed ACKs.
    wbufsize = 1 << 16

    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            return self.send(200, {"ok": True})
        time.sleep(settings.WORK_MS / 1000)
        if self.path == "/":
            return self.send(200, {
                "shop": GREETING,
                "release": os.environ.get("SLUICE_RELEASE", "dev"),
                "products": len(PRODUCTS),
                "checkout": settings.CHECKOUT,
            })
        if self.path.startswith("/checkout"):
            try:
                receipt = shop.checkout(self.headers.get("X-User-Id"), CART, PRODUCTS)
            except shop.CheckoutError as e:
                return self.send(500, {"error": str(e)})
            return self.send(200, receipt)
        return self.send(404, {"error": "no such page"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))
        if self.path == "/order":
            return self.send(200, {"ordered": True})
        return self.send(404, {"error": "no such page"})


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
