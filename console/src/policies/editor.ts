// The policy editor: CodeMirror 6, one editor state per file (so each file keeps its own undo
// history and cursor), Cedar highlighting, and the engine's validation errors as lint
// diagnostics at their line and column.

import { EditorState, type Extension } from "@codemirror/state";
import {
  EditorView,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { bracketMatching, defaultHighlightStyle, indentOnInput, syntaxHighlighting } from "@codemirror/language";
import { lintGutter, lintKeymap, setDiagnostics, type Diagnostic } from "@codemirror/lint";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import type { SourceError } from "../api";
import { languageFor } from "./cedar";

const theme = EditorView.theme({
  "&": { fontSize: "14px", border: "1px solid var(--line)", borderRadius: "4px", background: "var(--field)" },
  "&.cm-focused": { outline: "2px solid var(--focus)", outlineOffset: "1px" },
  ".cm-content": { fontFamily: "var(--mono)" },
  ".cm-gutters": { background: "var(--panel)", borderRight: "1px solid var(--line)" },
  ".cm-scroller": { minHeight: "18rem", maxHeight: "60vh" },
});

function extensions(file: string, readOnly: boolean, onChange: (text: string) => void): Extension[] {
  const language = languageFor(file);
  return [
    lineNumbers(),
    highlightActiveLineGutter(),
    highlightSpecialChars(),
    history(),
    drawSelection(),
    indentOnInput(),
    bracketMatching(),
    highlightActiveLine(),
    highlightSelectionMatches(),
    syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
    lintGutter(),
    // Tab is left to the browser, so the keyboard can always leave the editor.
    keymap.of([...defaultKeymap, ...historyKeymap, ...searchKeymap, ...lintKeymap]),
    language ?? [],
    theme,
    EditorState.readOnly.of(readOnly),
    EditorView.editable.of(!readOnly),
    EditorView.contentAttributes.of({ "aria-label": `${readOnly ? "Contents" : "Edit"} of ${file}` }),
    EditorView.updateListener.of((u) => {
      if (u.docChanged) onChange(u.state.doc.toString());
    }),
  ];
}

/** Where the engine's 1-based line and column (in characters) fall in the document. */
function position(doc: EditorState["doc"], line: number, column: number): { from: number; to: number } {
  const l = doc.line(Math.min(Math.max(line, 1), doc.lines));
  // Columns count Unicode scalar values; CodeMirror counts UTF-16 units.
  let offset = 0;
  let chars = 1;
  for (const ch of l.text) {
    if (chars >= column) break;
    offset += ch.length;
    chars++;
  }
  const from = l.from + Math.min(offset, l.length);
  // The engine gives a point; mark the word (or the rest of the line) there.
  const rest = l.text.slice(from - l.from);
  const word = /^[A-Za-z0-9_:@".-]+/.exec(rest)?.[0].length ?? 0;
  let to = word > 0 ? from + word : l.to;
  if (to <= from) to = Math.min(from + 1, doc.length);
  return { from, to };
}

export function diagnosticsFor(state: EditorState, errors: SourceError[]): Diagnostic[] {
  return errors.map((e) => {
    const { from, to } = e.line ? position(state.doc, e.line, e.column ?? 1) : { from: 0, to: Math.min(1, state.doc.length) };
    return {
      from,
      to,
      severity: "error",
      source: e.code,
      message: e.hint ? `${e.message}\n${e.hint}` : e.message,
    };
  });
}

export class FileEditor {
  readonly view: EditorView;
  private states = new Map<string, EditorState>();
  private current: string | null = null;

  constructor(
    parent: HTMLElement,
    private readonly readOnly: boolean,
    private readonly onChange: (file: string, text: string) => void,
  ) {
    // CodeMirror injects its styles at run time. Into a document it would add a <style> element,
    // which the console's CSP refuses; into a shadow root it uses a constructed stylesheet
    // (adoptedStyleSheets), which the CSP allows. So the editor lives in a shadow root.
    const shadow = parent.attachShadow({ mode: "open" });
    const mount = document.createElement("div");
    shadow.appendChild(mount);
    this.view = new EditorView({ parent: mount, root: shadow });
  }

  get file(): string | null {
    return this.current;
  }

  /** Shows `file`, creating its state from `text` the first time. */
  open(file: string, text: string): void {
    if (this.current) this.states.set(this.current, this.view.state);
    let state = this.states.get(file);
    if (!state || state.doc.toString() !== text) {
      state = EditorState.create({ doc: text, extensions: extensions(file, this.readOnly, (t) => this.onChange(file, t)) });
    }
    this.current = file;
    this.view.setState(state);
  }

  /** Drops a file's state (deleted, or replaced wholesale). */
  forget(file: string): void {
    this.states.delete(file);
    if (this.current === file) this.current = null;
  }

  /** Shows the engine's errors for the open file, at their places. */
  showErrors(errors: SourceError[]): void {
    const mine = errors.filter((e) => e.file === this.current);
    this.view.dispatch(setDiagnostics(this.view.state, diagnosticsFor(this.view.state, mine)));
  }

  /** Puts the cursor at a line and column and focuses the editor. */
  reveal(line: number, column: number): void {
    const { from } = position(this.view.state.doc, line, column);
    this.view.dispatch({ selection: { anchor: from }, scrollIntoView: true });
    this.view.focus();
  }

  destroy(): void {
    this.view.destroy();
  }
}
