"""Starts the shop on a free port and asks it for its pages."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

server = subprocess.Popen(
    [sys.executable, os.path.join(HERE, "..", "app", "server.py")],
    env={**os.environ, "PORT": str(port), "DATA_DIR": os.path.join(HERE, "..", "fixtures")},
)
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    home = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2))
    assert home["products"] == 3, home
    request = urllib.request.Request(f"http://127.0.0.1:{port}/checkout", headers={"X-User-Id": "user-1"})
    receipt = json.load(urllib.request.urlopen(request, timeout=2))
    assert receipt["total"] == 2100, receipt
    print("integration: home and a signed-in checkout answer")
finally:
    server.terminate()
    server.wait()
