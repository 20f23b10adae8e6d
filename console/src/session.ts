// Who is signed in. The token lives in sessionStorage (gone when the tab closes); its claims are
// read here only to choose what to show — the engine checks the token on every request.

export type Role = "regulator" | "coordinator" | "policy_author" | "auditor" | "chain" | "admin" | "monitor";

export const ROLES: Role[] = ["policy_author", "auditor", "admin", "regulator", "coordinator", "chain", "monitor"];

export interface Session {
  token: string;
  sub: string;
  roles: Role[];
  /** Seconds since the epoch. */
  exp: number;
}

const KEY = "regulator.session";
let reason: string | null = null;
const listeners: (() => void)[] = [];

function base64url(text: string): string {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** Reads a JWT's claims without checking it: that is the engine's job. */
export function claims(token: string): Session {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new Error("a token has three parts separated by dots (header.claims.signature)");
  let payload: { sub?: unknown; roles?: unknown; exp?: unknown };
  try {
    payload = JSON.parse(base64url(parts[1]));
  } catch {
    throw new Error("the token's claims are not base64url JSON");
  }
  if (typeof payload.sub !== "string") throw new Error("the token has no subject (sub)");
  const roles = Array.isArray(payload.roles) ? payload.roles.filter((r): r is Role => typeof r === "string") : [];
  const exp = typeof payload.exp === "number" ? payload.exp : 0;
  if (exp && exp * 1000 < Date.now()) throw new Error(`the token expired at ${new Date(exp * 1000).toISOString()}`);
  return { token: token.trim(), sub: payload.sub, roles: roles as Role[], exp };
}

export function session(): Session | null {
  const stored = sessionStorage.getItem(KEY);
  if (!stored) return null;
  try {
    const s = JSON.parse(stored) as Session;
    if (s.exp && s.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(KEY);
      reason = "Your token expired. Sign in again.";
      return null;
    }
    return s;
  } catch {
    return null;
  }
}

export function signIn(token: string): Session {
  const s = claims(token);
  sessionStorage.setItem(KEY, JSON.stringify(s));
  reason = null;
  listeners.forEach((f) => f());
  return s;
}

export function signOut(why: string | null = null): void {
  sessionStorage.removeItem(KEY);
  reason = why;
  listeners.forEach((f) => f());
}

/** Why the last session ended, once. */
export function takeSignOutReason(): string | null {
  const r = reason;
  reason = null;
  return r;
}

export function onSessionChange(f: () => void): void {
  listeners.push(f);
}

export function has(...roles: Role[]): boolean {
  const s = session();
  return !!s && roles.some((r) => s.roles.includes(r));
}
