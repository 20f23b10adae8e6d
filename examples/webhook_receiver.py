#!/usr/bin/env python3
"""A minimal chain adapter: verifies the engine's webhooks and applies them idempotently.

    REGULATOR_WEBHOOK_SECRET=whsec_... python3 examples/webhook_receiver.py 9000

Standard library only. State lives in memory here; a real adapter keeps it, and applies each
decision, in one transaction of its own store before answering 2xx.
"""
import base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRETS = [base64.b64decode(s.removeprefix("whsec_"))
           for s in os.environ["REGULATOR_WEBHOOK_SECRET"].split(",")]  # old,new while rotating
TOLERANCE = 300      # seconds: refuse replays of old messages
last_seq = 0         # the last decision applied
targets = {}         # (chain, asset, holder) -> the absolute state the engine sent
versions = {}        # (chain, asset) -> the asset's version after the last decision applied


def verified(headers, body):
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > TOLERANCE:
        return False
    signed = f"{msg_id}.{ts}.".encode() + body
    expected = [base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
                for k in SECRETS]
    given = [s.removeprefix("v1,") for s in headers["webhook-signature"].split(" ")
             if s.startswith("v1,")]
    return any(hmac.compare_digest(g, e) for g in given for e in expected)


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        global last_seq
        body = self.rfile.read(int(self.headers["content-length"]))
        if not verified(self.headers, body):
            return self.answer(401)
        data = json.loads(body)["data"]
        decision, state = data["decision"], data["state"]
        if data["seq"] <= last_seq:          # a retry or a replay: already applied
            return self.answer(204)
        t = decision["target"]
        asset = (t["chain"], t["asset"])
        before = decision["state_before"]["version"]
        if versions.get(asset, 0) != before:  # a decision on this asset is missing
            print(f"gap on {asset}: have v{versions.get(asset, 0)}, decision starts at v{before};"
                  " reconcile with GET /v1/targets/{chain}/{asset}", file=sys.stderr)
        targets[(t["chain"], t["asset"], t.get("holder"))] = state   # absolute: idempotent
        versions[asset] = state["version"]
        last_seq = data["seq"]
        print(f"seq {data['seq']}: {decision['kind']} {decision['outcome']} on {t} -> "
              f"{state['level']} frozen={state['frozen']} v{state['version']}")
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 9000), Hook).serve_forever()
