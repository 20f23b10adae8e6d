// Checking a decision's evidence in the browser, trusting nothing the engine computed: the
// record's hash is recomputed from its exact text, its leaf and the RFC 6962 audit path are
// folded into a root here, and the root is checked against a checkpoint whose Ed25519 signature
// WebCrypto verifies (docs/audit.md has the formats).

import { api } from "../api";

export interface Checkpoint {
  tree_size: number;
  root: string;
  /** Absent from checkpoints signed before the state map (text v1). */
  state_root?: string;
  signed_at: string;
  key_id: string;
  signature: string;
  signed_text: string;
}

export interface InclusionProof {
  seq: number;
  leaf_index: number;
  tree_size: number;
  record_hash: string;
  leaf_hash: string;
  audit_path: string[];
}

export interface PublicKey {
  key_id: string;
  algorithm: string;
  public_key: string;
  pem: string;
}

export interface Step {
  ok: boolean;
  title: string;
  detail: string;
}

export interface Verification {
  ok: boolean;
  steps: Step[];
  /** What was proven, in one paragraph, when everything held. */
  summary: string;
  checkpoint?: Checkpoint;
  key?: PublicKey;
}

const hex = (bytes: Uint8Array<ArrayBuffer>): string => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

function unhex(text: string): Uint8Array<ArrayBuffer> {
  if (!/^([0-9a-f]{2})*$/i.test(text)) throw new Error(`not hex: ${text.slice(0, 20)}…`);
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function unbase64(text: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function sha256(...parts: Uint8Array<ArrayBuffer>[]): Promise<Uint8Array<ArrayBuffer>> {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
}

const LEAF = new Uint8Array([0]);
const NODE = new Uint8Array([1]);

/** RFC 9162 §2.1.3.2: the root an audit path gives for a leaf, or null if the path cannot fit. */
export async function rootFromPath(leafIndex: number, treeSize: number, leaf: Uint8Array<ArrayBuffer>, path: Uint8Array<ArrayBuffer>[]): Promise<Uint8Array<ArrayBuffer> | null> {
  if (leafIndex >= treeSize) return null;
  let fn = leafIndex;
  let sn = treeSize - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(NODE, p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await sha256(NODE, r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

/**
 * The fields of a checkpoint's signed text: `regulator checkpoint v2` (with the state root) or
 * `v1` (checkpoints signed before the state map).
 */
export function parseSignedText(text: string): { tree_size: number; root: string; state_root: string | null; signed_at: string; key_id: string } | null {
  const lines = text.split("\n");
  const v2 = lines[0] === "regulator checkpoint v2";
  const n = v2 ? 7 : 6;
  if ((!v2 && lines[0] !== "regulator checkpoint v1") || lines[n - 1] !== "" || lines.length !== n) return null;
  const get = (i: number, name: string) => (lines[i].startsWith(`${name} `) ? lines[i].slice(name.length + 1) : null);
  const size = get(1, "tree_size");
  const root = get(2, "root");
  const state = v2 ? get(3, "state_root") : null;
  const at = get(v2 ? 4 : 3, "signed_at");
  const key = get(v2 ? 5 : 4, "key_id");
  if (!size || !/^\d+$/.test(size) || !root || !at || !key || (v2 && !state)) return null;
  return { tree_size: Number(size), root, state_root: state, signed_at: at, key_id: key };
}

export function webCryptoAvailable(): boolean {
  return typeof crypto !== "undefined" && !!crypto.subtle;
}

/**
 * Verifies decision `seq`, whose exact record text is `text` and whose hash the log lists as
 * `listedHash`, against the latest signed checkpoint. `pinnedKeyId`, if the auditor gave one,
 * is the key id they obtained out of band.
 */
export async function verifyDecision(seq: number, text: string, listedHash: string, pinnedKeyId: string | null): Promise<Verification> {
  const steps: Step[] = [];
  const step = (ok: boolean, title: string, detail: string) => {
    steps.push({ ok, title, detail });
    return ok;
  };
  const done = (extra: Partial<Verification> = {}): Verification => ({
    ok: steps.every((s) => s.ok),
    steps,
    summary: "",
    ...extra,
  });

  // 1. The record's own bytes.
  const computed = hex(await sha256(new TextEncoder().encode(text)));
  step(
    computed === listedHash,
    "The record's text hashes to the hash the log lists",
    computed === listedHash
      ? `SHA-256 of the record's ${fmtBytes(text)} is ${computed}.`
      : `SHA-256 of the record's text is ${computed}, but the log lists ${listedHash}: the record was changed after it was hashed.`,
  );

  // 2. The latest checkpoint, and the key that signed it.
  const { body: checkpoint } = await api<Checkpoint>("GET", "/v1/audit/checkpoints/latest");
  const { body: key } = await api<PublicKey>("GET", "/v1/audit/public-key");
  const signed = parseSignedText(checkpoint.signed_text);
  if (!step(!!signed, "The checkpoint's signed text is well formed", signed ? checkpoint.signed_text.trimEnd().replace(/\n/g, " · ") : "The signed text is not a `regulator checkpoint` v1 or v2 text.")) {
    return done({ checkpoint, key });
  }
  const s = signed!;
  if (seq > s.tree_size) {
    step(false, "The decision is covered by the latest checkpoint", `The latest checkpoint covers decisions 1 to ${s.tree_size}; decision ${seq} is newer. Publish a checkpoint and verify again.`);
    return done({ checkpoint, key });
  }
  step(
    s.tree_size === checkpoint.tree_size && s.root === checkpoint.root && s.state_root === (checkpoint.state_root ?? null) && s.key_id === checkpoint.key_id,
    "The checkpoint's fields are the ones signed",
    `Tree size ${s.tree_size}, root ${s.root}, key ${s.key_id}.`,
  );

  const rawKey = unbase64(key.public_key);
  const keyId = hex(await sha256(rawKey)).slice(0, 16);
  step(
    rawKey.length === 32 && keyId === s.key_id,
    "The public key is the one the checkpoint names",
    keyId === s.key_id
      ? `The first 8 bytes of SHA-256 of the 32-byte Ed25519 key are ${keyId}.`
      : `The served key's id is ${keyId}, but the checkpoint names ${s.key_id}.`,
  );
  if (pinnedKeyId) {
    step(
      pinnedKeyId.toLowerCase() === keyId,
      "The key is the one you pinned",
      pinnedKeyId.toLowerCase() === keyId ? `You pinned key id ${pinnedKeyId}.` : `You pinned key id ${pinnedKeyId}; the engine signs with ${keyId}.`,
    );
  }

  let signatureOk = false;
  try {
    const cryptoKey = await crypto.subtle.importKey("raw", rawKey, { name: "Ed25519" }, false, ["verify"]);
    signatureOk = await crypto.subtle.verify({ name: "Ed25519" }, cryptoKey, unbase64(checkpoint.signature), new TextEncoder().encode(checkpoint.signed_text));
    step(signatureOk, "The checkpoint's Ed25519 signature is valid", signatureOk ? `Checked by this browser's WebCrypto against key ${keyId}.` : "The signature does not match the signed text and key.");
  } catch (e) {
    step(false, "The checkpoint's Ed25519 signature is valid", `This browser could not check an Ed25519 signature: ${(e as Error).message}.`);
  }

  // 3. The record is a leaf of the signed tree.
  const { body: proof } = await api<InclusionProof>("GET", `/v1/audit/proofs/inclusion?seq=${seq}&tree_size=${s.tree_size}`);
  const leaf = await sha256(LEAF, unhex(computed));
  const root = await rootFromPath(seq - 1, s.tree_size, leaf, proof.audit_path.map(unhex));
  const rootHex = root ? hex(root) : null;
  step(
    rootHex === s.root,
    "The record is in the signed tree",
    rootHex === s.root
      ? `Leaf ${seq - 1} = SHA-256(0x00 ‖ record hash) and the ${proof.audit_path.length} sibling hashes of the audit path give the signed root ${s.root}.`
      : rootHex
        ? `The record's leaf and the audit path give root ${rootHex}, not the signed root ${s.root}.`
        : `The audit path (${proof.audit_path.length} hashes) does not fit a tree of ${s.tree_size} leaves.`,
  );

  const result = done({ checkpoint, key });
  if (result.ok) {
    result.summary =
      `Decision ${seq}'s exact text hashes to ${computed}. That hash is leaf ${seq - 1} of the ${s.tree_size}-record tree ` +
      `whose root ${s.root.slice(0, 16)}… was signed at ${s.signed_at} by Ed25519 key ${keyId}. ` +
      (pinnedKeyId
        ? "That is the key you pinned."
        : "The key came from this engine: compare its id with the one you obtained out of band, or enter that id as the expected key id and verify again.") +
      " Not checked here: that this checkpoint extends the checkpoints you kept from before (a consistency proof; `regulator audit verify-proof` checks it offline).";
  }
  return result;
}

function fmtBytes(text: string): string {
  return `${new TextEncoder().encode(text).length.toLocaleString("en-US")} bytes`;
}
