// The JS client on Node, as a Node backend or script would use it: start a run (or
// attach to one) and print each frame it yields as a JSON line, then {"done": ...}.
// Usage: node node_client.mjs <clients/js dir> <HTTP API url> <workflow> [input JSON]
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, baseUrl, workflow, input = "{}"] = process.argv.slice(2);
const clientDir = resolve(dir);
const require = createRequire(join(clientDir, "package.json"));
const WebSocket = require("ws"); // the caller's WebSocket implementation, as the README says
const { HatchwayClient } = await import(pathToFileURL(join(clientDir, "dist", "index.js")).href);

const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const client = new HatchwayClient({ baseUrl, WebSocket });
const run = await client.start(workflow, JSON.parse(input));
say({ started: run.runId });
run.on("connection", (state) => say({ connection: state }));
let text = "";
try {
  for await (const frame of run.frames()) {
    if (frame.type === "chunk") text += frame.data ?? "";
    say({ frame });
  }
  say({ done: run.runId, text });
} catch (error) {
  say({ failed: String(error?.message ?? error), code: error?.code });
  process.exitCode = 1;
} finally {
  client.close();
}
