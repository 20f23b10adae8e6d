// Builds the console into dist/: one script, one stylesheet, one page. The output is committed
// (the service embeds dist/ at compile time), so a user never runs this; a developer who changes
// src/ runs `npm ci && npm run build` and commits dist/ with the change.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

// `--outdir DIR` builds elsewhere: tests/console_browser.rs checks that the committed dist/ is
// exactly what the source builds to.
const at = process.argv.indexOf("--outdir");
const outdir = at > 0 ? process.argv[at + 1] : "dist";
await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });

const options = {
  entryPoints: { console: "src/main.ts" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["chrome120", "firefox120", "safari17"],
  outdir,
  legalComments: "linked",
  logLevel: "info",
};
await build(options);
await build({ ...options, entryPoints: { console: "src/console.css" } });
await copyFile("src/index.html", `${outdir}/index.html`);
