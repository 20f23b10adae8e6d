// The one way the console talks to the engine: same origin, the session's bearer token, and
// RFC 9457 problem documents turned into `Problem` errors people can read.

import { session, signOut } from "./session";

/** A source error in a policy draft, as `urn:regulator:problem:policy-invalid` lists them. */
export interface SourceError {
  code: string;
  file: string;
  line?: number | null;
  column?: number | null;
  message: string;
  hint?: string | null;
}

export class Problem extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    readonly title: string,
    readonly detail: string | undefined,
    readonly errors: SourceError[] = [],
  ) {
    super(detail ? `${title}: ${detail}` : title);
  }

  /** The stable slug of `type`, e.g. `policy-invalid`. */
  get slug(): string {
    return this.type.replace(/^urn:regulator:problem:/, "");
  }
}

export interface Answer<T> {
  status: number;
  body: T;
  text: string;
  headers: Headers;
}

interface Options {
  body?: unknown;
  signal?: AbortSignal;
  headers?: Record<string, string>;
  /** Send no token (the public endpoints). */
  anonymous?: boolean;
}

async function send(method: string, path: string, options: Options): Promise<Response> {
  const headers: Record<string, string> = { accept: "application/json", ...options.headers };
  const token = session()?.token;
  if (token && !options.anonymous) headers.authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(path, { method, headers, body, signal: options.signal });
  if (response.status === 401 && !options.anonymous) {
    const problem = await toProblem(response);
    signOut(`The server refused the token (${problem.detail ?? problem.title}). Sign in again.`);
    throw problem;
  }
  if (!response.ok) throw await toProblem(response);
  return response;
}

async function toProblem(response: Response): Promise<Problem> {
  const text = await response.text();
  try {
    const p = JSON.parse(text);
    return new Problem(response.status, p.type ?? "about:blank", p.title ?? response.statusText, p.detail, p.errors ?? []);
  } catch {
    return new Problem(response.status, "about:blank", `${response.status} ${response.statusText}`, text.slice(0, 300) || undefined);
  }
}

/** A JSON request; throws `Problem` on any error status. */
export async function api<T>(method: string, path: string, options: Options = {}): Promise<Answer<T>> {
  const response = await send(method, path, options);
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : null) as T, text, headers: response.headers };
}

/** The raw response, for streams (SSE) and downloads (exports). */
export function raw(method: string, path: string, options: Options = {}): Promise<Response> {
  return send(method, path, options);
}

export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** A problem (or any error) as one sentence for a person. */
export function describe(error: unknown): string {
  if (error instanceof Problem) {
    if (error.status === 403) return `Not allowed: ${error.detail ?? "your roles do not allow this"}.`;
    return error.detail ?? error.title;
  }
  if (error instanceof DOMException && error.name === "AbortError") return "Cancelled.";
  if (error instanceof TypeError) return `The engine could not be reached (${error.message}).`;
  return String(error);
}
