"""Screenshots of the PBT dashboard (HParams, custom scalars, exploits text) for docs/img, in headless Chromium.

Starts TensorBoard on RUN_DIR/tb, opens each view in Chromium (Debian's ``chromium`` package) through
its DevTools protocol, clicks what a user would click, and saves one PNG per view:

    apt-get install -y chromium && pip install websocket-client
    python scripts/dashboard_screenshots.py RUN_DIR [--out docs/img]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import websocket

# Depth-first through every shadow root: the leaf element whose text is the label, clicked.
CLICK = """(label) => {
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const r = walk(el.shadowRoot); if (r) return r; }
      if (el.children.length === 0 && el.textContent.trim().toLowerCase() === label.toLowerCase()) return el;
    }
    return null;
  };
  const el = walk(document);
  if (!el) return false;
  el.click();
  return true;
}"""

VIEWS = [
    ("tensorboard_hparams", "hparams", ["Parallel Coordinates View"]),
    ("tensorboard_custom_scalars", "custom_scalars", []),
    ("tensorboard_exploits_text", "text", []),
]


def wait_for(url: str, seconds: float = 60) -> Any:
    end = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url) as response:
                return json.load(response) if url.endswith("/json") else response.status
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--tb-port", type=int, default=6123)
    parser.add_argument("--cdp-port", type=int, default=9333)
    parser.add_argument("--tensorboard", default="tensorboard", help="the tensorboard executable")
    args = parser.parse_args()
    tb_cmd = [args.tensorboard, "--logdir", os.path.join(args.run_dir, "tb")]
    tb = subprocess.Popen([*tb_cmd, "--port", str(args.tb_port), "--host", "127.0.0.1"], stderr=subprocess.DEVNULL)
    chrome = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--remote-debugging-port={args.cdp_port}", "--window-size=1400,900", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{args.tb_port}/")
        pages = wait_for(f"http://127.0.0.1:{args.cdp_port}/json")
        ws = websocket.create_connection(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
        counter = [0]

        def call(method: str, **params: Any) -> dict[str, Any]:
            counter[0] += 1
            ws.send(json.dumps({"id": counter[0], "method": method, "params": params}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == counter[0]:
                    return message.get("result", {})

        call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        os.makedirs(args.out, exist_ok=True)
        for name, plugin, clicks in VIEWS:
            call("Page.navigate", url=f"http://127.0.0.1:{args.tb_port}/?darkMode=false#{plugin}")
            time.sleep(8)
            for label in clicks:
                result = call("Runtime.evaluate", expression=f"({CLICK})({json.dumps(label)})", returnByValue=True)
                if not result.get("result", {}).get("value"):
                    raise SystemExit(f"{name}: no {label!r} to click")
                time.sleep(4)
            png = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
            path = os.path.join(args.out, f"{name}.png")
            with open(path, "wb") as fh:
                fh.write(png)
            print(f"wrote {path} ({len(png)} bytes)")
    finally:
        chrome.terminate()
        tb.terminate()
        chrome.wait()
        tb.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
