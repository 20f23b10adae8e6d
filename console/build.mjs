// Builds the console into dist/: one script, one stylesheet, one page. The output is committed
// (the service embeds dist/ at compile time), so a user never runs this; a developer who changes
// src/ runs `npm ci && npm run build` and commits dist/ with the change.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const watch = process.argv.includes("--watch");
await rm("dist", { recursive: true, force: true });
await mkdir("dist", { recursive: true });

const options = {
  entryPoints: { console: "src/main.ts" },
  bundle: true,
  minify: !watch,
  format: "esm",
  target: ["chrome120", "firefox120", "safari17"],
  outdir: "dist",
  legalComments: "linked",
  logLevel: "info",
};
await build(options);
await build({ ...options, entryPoints: { console: "src/console.css" } });
await copyFile("src/index.html", "dist/index.html");
