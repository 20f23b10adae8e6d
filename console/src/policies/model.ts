// The policy lifecycle's shapes (src/api/policies.rs) and the draft an author is working on.

import { api } from "../api";
import { session } from "../session";

export type Files = Record<string, string>;

export interface VersionView {
  version: number;
  hash: string;
  author: string;
  message: string;
  created_at: string;
}

export interface ActivationView {
  seq: number;
  version: number;
  hash: string;
  actor: string;
  recorded_at: string;
}

export interface VersionList {
  active: ActivationView | null;
  versions: VersionView[];
}

export interface VersionDetail extends VersionView {
  files: Files;
}

export interface CaseResult {
  file: string;
  name: string;
  passed: boolean;
  failures: string[];
}

export interface TestReport {
  passed: boolean;
  cases: number;
  failed: number;
  results: CaseResult[];
}

export interface PolicySummary {
  id: string;
  effect: string;
  priority?: number | null;
  file: string;
  line: number;
  text: string;
}

export interface PolicyDiff {
  added: PolicySummary[];
  removed: PolicySummary[];
  changed: { id: string; from: PolicySummary; to: PolicySummary }[];
  unchanged: number;
  schema_changed: boolean;
  entities_changed: boolean;
  tests_changed: string[];
}

export interface Verdict {
  outcome: string;
  priority: number;
  determining_policies: string[];
  reason_code: string;
}

export interface Change {
  seq: number;
  order_id: string;
  kind: string;
  issuer: string;
  target: { chain: string; asset: string; holder?: string | null };
  decided_at: string;
  recorded: Verdict;
  simulated: Verdict;
  differs: string[];
}

export interface Report {
  from_seq: number;
  to_seq: number;
  orders: number;
  counts: { changed: number; outcome: number; priority: number; determining_policies: number; transitions: Record<string, number> };
  changes: Change[];
  truncated: boolean;
  elapsed_ms: number;
  orders_per_second: number;
}

export interface SimulationStatus {
  id: string;
  status: "running" | "done" | "failed";
  replayed: number;
  total: number;
  report?: Report;
  error?: { title?: string; detail?: string };
}

export const versions = () => api<VersionList>("GET", "/v1/policies/versions").then((a) => a.body);
export const activations = () =>
  api<{ activations: ActivationView[] }>("GET", "/v1/policies/activations").then((a) => a.body.activations);

const detailCache = new Map<number, Promise<VersionDetail>>();
/** A stored version never changes, so its files are fetched once. */
export function version(n: number): Promise<VersionDetail> {
  let p = detailCache.get(n);
  if (!p) {
    p = api<VersionDetail>("GET", `/v1/policies/versions/${n}`).then((a) => a.body);
    p.catch(() => detailCache.delete(n));
    detailCache.set(n, p);
  }
  return p;
}

/** The draft, kept in this browser (per subject) so a reload loses nothing. */
export interface Draft {
  base: number;
  files: Files;
}

const draftKey = () => `regulator.draft.${session()?.sub ?? ""}`;

export function loadDraft(): Draft | null {
  try {
    const d = JSON.parse(localStorage.getItem(draftKey()) ?? "null");
    return d && typeof d.base === "number" && d.files ? d : null;
  } catch {
    return null;
  }
}

export function saveDraft(d: Draft): void {
  localStorage.setItem(draftKey(), JSON.stringify(d));
}

export function discardDraft(): void {
  localStorage.removeItem(draftKey());
}

/** The files a bundle may hold: schema, entities, policies, tests. */
export function validFileName(name: string): boolean {
  return (
    name === "schema.cedarschema" ||
    name === "entities.json" ||
    /^[A-Za-z0-9_.-]+\.cedar$/.test(name) ||
    /^tests\/[A-Za-z0-9_.-]+\.toml$/.test(name)
  );
}

/** Files in the order a person reads a bundle: policies, then schema and entities, then tests. */
export function sortedNames(files: Files): string[] {
  const rank = (n: string) => (n.endsWith(".cedar") ? 0 : n.startsWith("tests/") ? 2 : 1);
  return Object.keys(files).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}
