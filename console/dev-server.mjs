// For working on the console: serves dist/ at /console with the engine's own CSP, and passes
// everything else to a running engine, so a rebuilt dist/ shows without rebuilding the binary.
//
//   node dev-server.mjs [port] [engine]     (defaults: 8081, http://127.0.0.1:8080)
import http from "node:http";
import { readFile } from "node:fs/promises";
import path from "node:path";

const port = Number(process.argv[2] ?? 8081);
const engine = new URL(process.argv[3] ?? "http://127.0.0.1:8080");
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain" };
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), "dist");

http
  .createServer(async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    if (url.pathname === "/console" || url.pathname.startsWith("/console/")) {
      const name = url.pathname.replace(/^\/console\/?/, "") || "index.html";
      const file = path.join(dist, path.normalize(name));
      try {
        if (!file.startsWith(dist)) throw new Error("outside dist");
        const body = await readFile(file);
        res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream", "content-security-policy": CSP, "cache-control": "no-cache" });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
      return;
    }
    const upstream = http.request(
      { host: engine.hostname, port: engine.port, method: req.method, path: req.url, headers: { ...req.headers, host: engine.host } },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", (e) => res.writeHead(502).end(String(e)));
    req.pipe(upstream);
  })
  .listen(port, "127.0.0.1", () => console.log(`console at http://127.0.0.1:${port}/console, engine ${engine.origin}`));
