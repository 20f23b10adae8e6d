// The audit API serves each record as the exact text that was hashed. `JSON.parse` would lose
// that text (key order, spacing, number spelling), so this reader returns, next to each value,
// where it sits in the answer: the browser can then hash the record's own bytes.

export type Spanned =
  | { kind: "object"; start: number; end: number; entries: Map<string, Spanned> }
  | { kind: "array"; start: number; end: number; items: Spanned[] }
  | { kind: "scalar"; start: number; end: number; value: unknown };

export function parseSpanned(text: string): Spanned {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at offset ${i}`);
  };
  const string = (): string => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail("unterminated string");
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (): Spanned => {
    ws();
    const start = i;
    const c = text[i];
    if (c === "{") {
      i++;
      const entries = new Map<string, Spanned>();
      ws();
      if (text[i] === "}") {
        i++;
        return { kind: "object", start, end: i, entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = string();
        ws();
        if (text[i++] !== ":") fail("expected ':'");
        entries.set(key, value());
        ws();
        const sep = text[i++];
        if (sep === "}") return { kind: "object", start, end: i, entries };
        if (sep !== ",") fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const items: Spanned[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return { kind: "array", start, end: i, items };
      }
      for (;;) {
        items.push(value());
        ws();
        const sep = text[i++];
        if (sep === "]") return { kind: "array", start, end: i, items };
        if (sep !== ",") fail("expected ',' or ']'");
      }
    }
    if (c === '"') {
      const v = string();
      return { kind: "scalar", start, end: i, value: v };
    }
    const m = /^(?:-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 64));
    if (!m) fail("unexpected character");
    i += m![0].length;
    return { kind: "scalar", start, end: i, value: JSON.parse(m![0]) };
  };
  const root = value();
  ws();
  if (i !== text.length) fail("trailing text");
  return root;
}

export function member(node: Spanned | undefined, key: string): Spanned | undefined {
  return node?.kind === "object" ? node.entries.get(key) : undefined;
}

export function slice(text: string, node: Spanned): string {
  return text.slice(node.start, node.end);
}

/** `{records: [{seq, hash, decision}], next_after}` with each decision's exact text. */
export interface RawRecord {
  seq: number;
  hash: string;
  text: string;
  // The decision, parsed from `text`.
  decision: Decision;
}

export function auditRecords(text: string): { records: RawRecord[]; next_after: number } {
  const root = parseSpanned(text);
  const list = member(root, "records");
  if (list?.kind !== "array") throw new SyntaxError("the answer has no records");
  const records = list.items.map((item) => {
    const decision = member(item, "decision");
    const seq = member(item, "seq");
    const hash = member(item, "hash");
    if (!decision || seq?.kind !== "scalar" || hash?.kind !== "scalar") throw new SyntaxError("a record lacks seq, hash or decision");
    const recordText = slice(text, decision);
    return { seq: Number(seq.value), hash: String(hash.value), text: recordText, decision: JSON.parse(recordText) as Decision };
  });
  const next = member(root, "next_after");
  return { records, next_after: next?.kind === "scalar" ? Number(next.value) : 0 };
}

export interface TargetState {
  version: number;
  level: string;
  level_number: number;
  frozen: string;
  holds: string[];
}

export interface Order {
  id: string;
  issuer: string;
  target: { chain: string; asset: string; holder?: string | null };
  legal_basis: { instrument: string; reference: string };
  instruction: Record<string, unknown> & { kind: string };
  intake_at?: string;
}

export interface Decision {
  seq: number;
  group?: number;
  subject: { subject: string; order_id?: string; hold?: string } | string;
  target: { chain: string; asset: string; holder?: string | null };
  kind: string;
  issuer: string;
  outcome: string;
  reason_code: string;
  reason: string;
  reason_detail: Record<string, unknown>;
  priority: number;
  determining_policies: string[];
  policy_version: string;
  asset_attributes: { issuer_jurisdiction: string; asset_class: string };
  order: Order | null;
  decided_at: string;
  state_before: TargetState;
  state_after: TargetState;
  effects: Record<string, unknown>[];
  prev_hash: string;
}

export function targetText(t: { chain: string; asset: string; holder?: string | null }): string {
  return `${t.chain}/${t.asset}${t.holder ? ` · holder ${t.holder}` : ""}`;
}

export function subjectKind(d: Decision): string {
  return typeof d.subject === "string" ? d.subject : d.subject.subject;
}
