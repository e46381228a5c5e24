#!/usr/bin/env node
// Entry point of the `pipe` command. Runs the CLI compiled into dist/ (rebuilt first when a source in
// src/ changed: build.js) and makes TypeScript pipeline files importable only for the commands that
// load one (typescript.js), so `pipe --help` or `pipe ls` start without a TypeScript loader. When dist/
// cannot be built (a syntax error in src/, a read-only checkout), runs the sources through tsx instead.
import { ensureBuilt } from "./build.js"

const argv = process.argv.slice(2)
if (await ensureBuilt()) {
  const { main } = await import("../dist/src/cli/main.js")
  process.exitCode = await main(argv, { loadTypeScript: () => import("./typescript.js") })
} else {
  const { register } = await import("tsx/esm/api")
  register()
  const { main } = await import("../src/cli/main.ts")
  process.exitCode = await main(argv, { loadTypeScript: async () => {} })
}
