#!/usr/bin/env python3
"""An independent verifier of the engine's state proofs and snapshot chunks.

Written from docs/audit.md ("The state map") alone, with the standard library only (hashlib;
Ed25519 is RFC 8032's reference arithmetic, below). It shares no code with the engine.

    verify_state.py PUBLIC_KEY_PEM DOCUMENT.json

DOCUMENT is what `GET /v1/targets/{chain}/{asset}/proof` or `GET /v1/snapshots` served. Prints
one JSON line saying what was verified; exits 0 if it verifies, 1 if not, 2 on unusable input.
"""

import base64
import hashlib
import json
import re
import sys
from datetime import datetime, timezone

# --- Ed25519 (RFC 8032 section 6) -----------------------------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y, sign):
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


_GY = 4 * pow(5, P - 2, P) % P
_GX = _recover_x(_GY, 0)
BASE = (_GX, _GY, 1, _GX * _GY % P)


def _add(a, b):
    pa = (a[1] - a[0]) * (b[1] - b[0]) % P
    pb = (a[1] + a[0]) * (b[1] + b[0]) % P
    pc = 2 * a[3] * b[3] * D % P
    pd = 2 * a[2] * b[2] % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, point):
    acc = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            acc = _add(acc, point)
        point = _add(point, point)
        s >>= 1
    return acc


def _equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _decompress(s):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def ed25519_verify(public, message, signature):
    if len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(h, a)))


# --- The formats of docs/audit.md ---------------------------------------------------------------


class Invalid(Exception):
    pass


def sha256(data):
    return hashlib.sha256(data).digest()


def public_key_from_pem(text):
    body = "".join(l for l in text.strip().splitlines() if not l.startswith("-----"))
    der = base64.b64decode(body)
    # SubjectPublicKeyInfo of Ed25519: a 12-byte header, then the 32-byte key.
    if len(der) != 44 or der[:12] != bytes.fromhex("302a300506032b6570032100"):
        raise ValueError("not an Ed25519 SubjectPublicKeyInfo")
    return der[12:]


def checkpoint_state_root(cp, public):
    """The checkpoint's state root, once its signed text and signature are checked."""
    key_id = sha256(public)[:8].hex()
    if cp["key_id"] != key_id:
        raise Invalid("the checkpoint names key %s, the key given is %s" % (cp["key_id"], key_id))
    if "state_root" not in cp:
        raise Invalid("the checkpoint signs no state root (text v1)")
    at = cp["signed_at"]
    text = (
        "regulator checkpoint v2\ntree_size %d\nroot %s\nstate_root %s\nsigned_at %s\nkey_id %s\n"
        % (cp["tree_size"], cp["root"], cp["state_root"], rfc3339_micros(at), key_id)
    )
    if cp.get("signed_text", text) != text:
        raise Invalid("signed_text is not what the checkpoint's fields say")
    if not ed25519_verify(public, text.encode(), base64.b64decode(cp["signature"])):
        raise Invalid("the checkpoint's signature does not verify")
    return bytes.fromhex(cp["state_root"])


_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def micros(text):
    """Microseconds since 1970 of an RFC 3339 time (digits past the sixth are dropped)."""
    m = _TIME.match(text)
    if not m:
        raise ValueError("not an RFC 3339 time: %r" % text)
    y, mo, d, h, mi, s, frac, zone = m.groups()
    t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    seconds = int(t.timestamp())
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000 + int(((frac or "") + "000000")[:6])


def rfc3339_micros(text):
    """The time as the signed text writes it: UTC, six fractional digits, Z."""
    us = micros(text)
    t = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%06dZ" % (us % 1_000_000)


def lp(text):
    raw = text.encode()
    return len(raw).to_bytes(4, "big") + raw


def target_key(chain, asset, holder):
    data = b"regulator state key v1\0" + lp(chain) + lp(asset)
    data += b"\x00" if holder is None else b"\x01" + lp(holder)
    return sha256(data)


def optional(flag_value, encode):
    return b"\x00" if flag_value is None else b"\x01" + encode(flag_value)


def hold_bytes(h):
    import uuid

    return (
        uuid.UUID(h["order_id"]).bytes
        + lp(h["kind"])
        + lp(h["issuer"])
        + optional(h.get("amount"), lambda a: int(a).to_bytes(16, "big"))
        + lp(h["instrument"])
        + int(h["priority"]).to_bytes(2, "big")
        + micros(h["placed_at"]).to_bytes(8, "big", signed=True)
        + optional(h.get("expires_at"), lambda t: micros(t).to_bytes(8, "big", signed=True))
        + optional(h.get("fencing_token"), lambda t: int(t).to_bytes(8, "big"))
    )


def holds_bytes(holds):
    ordered = sorted(holds, key=lambda h: __import__("uuid").UUID(h["order_id"]).bytes)
    return len(ordered).to_bytes(4, "big") + b"".join(hold_bytes(h) for h in ordered)


def holder_value(holds):
    return b"regulator state holder v1\0" + holds_bytes(holds)


def asset_value(version, token, holds):
    return (
        b"regulator state asset v1\0"
        + int(version).to_bytes(8, "big")
        + int(token).to_bytes(8, "big")
        + holds_bytes(holds)
    )


EMPTY = bytes(32)


def leaf_hash(key, value_hash):
    return sha256(b"\x00" + key + value_hash)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def bit(key, depth):
    return (key[depth // 8] >> (7 - depth % 8)) & 1


def parse_proof(data):
    """The proof bytes: u16 n, bitmap, the non-empty siblings, the terminal."""
    if len(data) < 2:
        raise Invalid("the proof is cut short")
    n = int.from_bytes(data[:2], "big")
    if n > 256:
        raise Invalid("more siblings than key bits")
    at = 2 + (n + 7) // 8
    bitmap = data[2:at]
    siblings = []
    for d in range(n):
        if bitmap[d // 8] & (0x80 >> (d % 8)):
            siblings.append(data[at : at + 32])
            at += 32
        else:
            siblings.append(EMPTY)
    tag = data[at : at + 1]
    if tag == b"\x00":
        terminal, at = None, at + 1
    elif tag == b"\x01":
        terminal, at = (data[at + 1 : at + 33], data[at + 33 : at + 65]), at + 65
    else:
        raise Invalid("unknown terminal")
    if at != len(data) or any(len(s) != 32 for s in siblings):
        raise Invalid("the proof has the wrong length")
    return siblings, terminal


def fold(key, h, siblings):
    for d in range(len(siblings) - 1, -1, -1):
        h = node_hash(siblings[d], h) if bit(key, d) else node_hash(h, siblings[d])
    return h


def prove_leaf(root, key, proof, value):
    """Checks that `value` (bytes, or None for absent) is at `key` in the map of `root`."""
    siblings, terminal = parse_proof(proof)
    if terminal is None:
        start, found = EMPTY, None
    else:
        k, vh = terminal
        start = leaf_hash(k, vh)
        if k == key:
            found = vh
        else:
            if any(bit(k, d) != bit(key, d) for d in range(len(siblings))):
                raise Invalid("the other leaf is off the key's path")
            found = None
    if fold(key, start, siblings) != root:
        raise Invalid("the proof does not lead to the state root")
    if value is None and found is not None:
        raise Invalid("the target is present, the document says absent")
    if value is not None and found != sha256(value):
        raise Invalid("the state given is not the one proven")


LEVEL = {"MONITOR": 1, "PREEMPT": 2, "SUSPEND": 3, "FREEZE": 4, "SEIZE": 5, "CONFISCATE": 5}


def effective(holds):
    level = max((LEVEL[h["kind"]] for h in holds), default=0)
    blocking = [h for h in holds if LEVEL[h["kind"]] >= 2]
    if any(h.get("amount") is None for h in blocking):
        frozen = "all"
    elif blocking:
        frozen = str(sum(int(h["amount"]) for h in blocking))
    else:
        frozen = "none"
    return level, frozen


def verify_target(doc, public):
    root = checkpoint_state_root(doc["checkpoint"], public)
    chain, asset, holder = doc["chain"], doc["asset"], doc.get("holder")
    holds = doc["holds"]
    for h in holds:
        t = h["target"]
        if t["chain"] != chain or t["asset"] != asset or t.get("holder") not in (None, holder):
            raise Invalid("hold %s is not on this target" % h["order_id"])
    asset_wide = [h for h in holds if h["target"].get("holder") is None]
    own = [h for h in holds if h["target"].get("holder") is not None]
    state = doc["state"]
    ap = doc["asset_proof"]
    key = target_key(chain, asset, None)
    if ap["key"] != key.hex():
        raise Invalid("the asset proof is for another key")
    value = asset_value(state["version"], doc["last_fencing_token"], asset_wide) if ap["present"] else None
    if not ap["present"] and (asset_wide or state["version"] != 0):
        raise Invalid("an absent asset leaf has no holds and version 0")
    prove_leaf(root, key, base64.b64decode(ap["proof"]), value)
    sizes = [len(base64.b64decode(ap["proof"]))]
    if holder is not None:
        hp = doc["holder_proof"]
        key = target_key(chain, asset, holder)
        if hp["key"] != key.hex():
            raise Invalid("the holder proof is for another key")
        if not hp["present"] and own:
            raise Invalid("an absent holder leaf has no holds")
        prove_leaf(root, key, base64.b64decode(hp["proof"]), holder_value(own) if hp["present"] else None)
        sizes.append(len(base64.b64decode(hp["proof"])))
    elif own:
        raise Invalid("a holder's hold without a holder")
    level, frozen = effective(holds)
    ids = sorted((h["order_id"] for h in holds), key=lambda i: __import__("uuid").UUID(i).bytes)
    if (state["level_number"], state["frozen"], state["holds"]) != (level, frozen, ids):
        raise Invalid("the state stated is not the one its holds make")
    return {
        "verified": "state",
        "tree_size": doc["checkpoint"]["tree_size"],
        "level_number": level,
        "frozen": frozen,
        "version": state["version"],
        "holds": ids,
        "proof_bytes": sizes,
    }


def subtree_root(leaves, depth):
    if not leaves:
        return EMPTY
    if len(leaves) == 1:
        return leaf_hash(*leaves[0])
    mid = 0
    while mid < len(leaves) and not bit(leaves[mid][0], depth):
        mid += 1
    return node_hash(subtree_root(leaves[:mid], depth + 1), subtree_root(leaves[mid:], depth + 1))


def verify_chunk(doc, public):
    root = checkpoint_state_root(doc["checkpoint"], public)
    depth, chunk = doc["depth"], doc["chunk"]
    if doc["chunks"] != 1 << depth or not 0 <= chunk < doc["chunks"]:
        raise Invalid("no such chunk")
    prefix = (chunk << (256 - depth)).to_bytes(32, "big") if depth else EMPTY
    siblings = [bytes.fromhex(s) for s in doc["siblings"]]
    if len(siblings) > depth:
        raise Invalid("more siblings than the depth")
    leaves, mine = [], []
    for l in doc["leaves"]:
        key, vh = bytes.fromhex(l["key"]), bytes.fromhex(l["value_hash"])
        if any(bit(key, d) != bit(prefix, d) for d in range(len(siblings))):
            raise Invalid("a leaf off the chunk's path")
        if "asset" in l:
            holder = l.get("holder")
            if target_key(doc["chain"], l["asset"], holder) != key:
                raise Invalid("a leaf's target is not its key's")
            for h in l["holds"]:
                t = h["target"]
                if (t["chain"], t["asset"], t.get("holder")) != (doc["chain"], l["asset"], holder):
                    raise Invalid("a hold on another target")
            value = holder_value(l["holds"]) if holder is not None else asset_value(l["version"], l["last_fencing_token"], l["holds"])
            if sha256(value) != vh:
                raise Invalid("a leaf's state is not its value hash")
            if all(bit(key, d) == bit(prefix, d) for d in range(depth)):
                mine.append(l)
        leaves.append((key, vh))
    if [k for k, _ in leaves] != sorted(set(k for k, _ in leaves)):
        raise Invalid("the leaves are not in key order")
    if fold(prefix, subtree_root(leaves, len(siblings)), siblings) != root:
        raise Invalid("the chunk does not lead to the state root")
    return {"verified": "snapshot_chunk", "chunk": chunk, "chunks": doc["chunks"], "targets": len(mine)}


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        public = public_key_from_pem(open(argv[1]).read())
        doc = json.load(open(argv[2]))
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    try:
        result = verify_chunk(doc, public) if "leaves" in doc else verify_target(doc, public)
    except (Invalid, KeyError, ValueError, TypeError) as e:
        print(json.dumps({"verified": False, "why": str(e)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
