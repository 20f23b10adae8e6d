// Cedar in the editor: a highlighting mode for policies and schemas, small modes for a bundle's
// JSON and TOML files, and a reader that finds one policy's text by its @id (for auditors, who
// see the policies that decided, as the version that decided wrote them).

import { StreamLanguage, type StringStream } from "@codemirror/language";

const POLICY_KEYWORDS = new Set(["permit", "forbid", "when", "unless", "if", "then", "else", "in", "has", "like", "is"]);
const SCOPE = new Set(["principal", "action", "resource", "context"]);
const SCHEMA_KEYWORDS = new Set(["namespace", "entity", "action", "type", "in", "appliesTo", "principal", "resource", "context", "enum", "tags"]);
const SCHEMA_TYPES = new Set(["String", "Long", "Bool", "Boolean", "Set", "Record", "Entity", "Extension", "ipaddr", "decimal", "datetime", "duration"]);

interface CedarState {
  inBlockComment: boolean;
}

function cedarMode(keywords: Set<string>, schema: boolean) {
  return StreamLanguage.define<CedarState>({
    name: schema ? "cedarschema" : "cedar",
    startState: () => ({ inBlockComment: false }),
    token(stream: StringStream, state: CedarState): string | null {
      if (state.inBlockComment) {
        if (stream.skipTo("*/")) {
          stream.match("*/");
          state.inBlockComment = false;
        } else stream.skipToEnd();
        return "comment";
      }
      if (stream.eatSpace()) return null;
      if (stream.match("//")) {
        stream.skipToEnd();
        return "comment";
      }
      if (stream.match("/*")) {
        state.inBlockComment = true;
        return "comment";
      }
      if (stream.match(/^"(?:[^"\\]|\\.)*"?/)) return "string";
      if (stream.match(/^@[A-Za-z_][A-Za-z0-9_]*/)) return "meta";
      if (stream.match(/^-?\d+/)) return "number";
      if (stream.match(/^[A-Za-z_][A-Za-z0-9_]*/)) {
        const word = stream.current();
        if (word === "true" || word === "false") return "bool";
        if (keywords.has(word)) return "keyword";
        if (!schema && SCOPE.has(word)) return "variableName.special";
        if (schema && SCHEMA_TYPES.has(word)) return "typeName";
        // An entity type is the part before `::` (Authority::"US-SEC").
        if (stream.match(/^::/, false)) return "typeName";
        return "variableName";
      }
      if (stream.match(/^(==|!=|<=|>=|&&|\|\||::|[<>!+\-*])/)) return "operator";
      stream.next();
      return "punctuation";
    },
    languageData: { commentTokens: { line: "//", block: { open: "/*", close: "*/" } } },
  });
}

export const cedar = cedarMode(POLICY_KEYWORDS, false);
export const cedarSchema = cedarMode(SCHEMA_KEYWORDS, true);

export const json = StreamLanguage.define<null>({
  name: "json",
  token(stream) {
    if (stream.eatSpace()) return null;
    if (stream.match(/^"(?:[^"\\]|\\.)*"\s*(?=:)/)) return "propertyName";
    if (stream.match(/^"(?:[^"\\]|\\.)*"?/)) return "string";
    if (stream.match(/^-?\d+(\.\d+)?([eE][+-]?\d+)?/)) return "number";
    if (stream.match(/^(true|false|null)\b/)) return "bool";
    stream.next();
    return "punctuation";
  },
});

export const toml = StreamLanguage.define<null>({
  name: "toml",
  token(stream) {
    if (stream.eatSpace()) return null;
    if (stream.match("#")) {
      stream.skipToEnd();
      return "comment";
    }
    if (stream.sol() && stream.match(/^\[\[?[^\]]*\]\]?/)) return "heading";
    if (stream.match('"""')) {
      stream.skipTo('"""') ? stream.match('"""') : stream.skipToEnd();
      return "string";
    }
    if (stream.match(/^"(?:[^"\\]|\\.)*"?/) || stream.match(/^'[^']*'?/)) return "string";
    if (stream.match(/^[A-Za-z0-9_.-]+(?=\s*=)/)) return "propertyName";
    if (stream.match(/^-?\d+(\.\d+)?/)) return "number";
    if (stream.match(/^(true|false)\b/)) return "bool";
    stream.next();
    return "punctuation";
  },
});

export function languageFor(file: string) {
  if (file.endsWith(".cedarschema")) return cedarSchema;
  if (file.endsWith(".cedar")) return cedar;
  if (file.endsWith(".json")) return json;
  if (file.endsWith(".toml")) return toml;
  return null;
}

export interface FoundPolicy {
  id: string;
  file: string;
  /** 1-based line of its first comment or annotation. */
  line: number;
  text: string;
}

/**
 * Every policy of a Cedar file with its `@id`, each with the comment lines just above it (which
 * say why the policy exists) and its text to the closing `;`.
 */
export function policiesIn(file: string, source: string): FoundPolicy[] {
  const found: FoundPolicy[] = [];
  let i = 0;
  let start = -1; // where the current policy (its comments and annotations) begins
  let id: string | null = null;
  let depth = 0;
  let sawEffect = false;
  const lineAt = (offset: number) => source.slice(0, offset).split("\n").length;
  while (i < source.length) {
    const c = source[i];
    if (source.startsWith("//", i)) {
      if (start < 0 && depth === 0) start = i;
      i = source.indexOf("\n", i);
      if (i < 0) break;
      continue;
    }
    if (source.startsWith("/*", i)) {
      const end = source.indexOf("*/", i + 2);
      i = end < 0 ? source.length : end + 2;
      continue;
    }
    if (c === '"') {
      i++;
      while (i < source.length && source[i] !== '"') i += source[i] === "\\" ? 2 : 1;
      i++;
      continue;
    }
    if (c === "\n" && depth === 0 && !sawEffect && id === null && start >= 0) {
      // A blank line ends a comment block that belongs to no policy.
      const next = source.slice(i + 1).match(/^[ \t]*(\n|$)/);
      if (next) start = -1;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (start < 0) start = i;
    if (c === "@" && depth === 0) {
      const m = /^@id\s*\(\s*("(?:[^"\\]|\\.)*")\s*\)/.exec(source.slice(i));
      if (m) {
        id = JSON.parse(m[1]);
        i += m[0].length;
        continue;
      }
    }
    if (/[A-Za-z]/.test(c) && depth === 0 && /^(permit|forbid)\b/.test(source.slice(i, i + 7))) sawEffect = true;
    if (c === "(" || c === "{" || c === "[") depth++;
    if (c === ")" || c === "}" || c === "]") depth--;
    if (c === ";" && depth === 0 && sawEffect) {
      if (id !== null) found.push({ id, file, line: lineAt(start), text: source.slice(start, i + 1) });
      start = -1;
      id = null;
      sawEffect = false;
    }
    i++;
  }
  return found;
}
