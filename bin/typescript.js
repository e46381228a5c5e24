// Makes TypeScript files importable in a process that runs the compiled CLI: tsx for the user's
// pipeline and stage files, then hooks.js on top of it, so their imports of src/**/*.ts resolve to
// the compiled modules in dist/ (ensured fresh first). Imported by the CLI before it loads a pipeline
// file; child processes that run one node get it with `--import`.
import { register } from "node:module"
import { pathToFileURL } from "node:url"
import { register as registerTsx } from "tsx/esm/api"
import { distDir, ensureBuilt, srcDir } from "./build.js"

if (!(await ensureBuilt())) throw new Error("src/ does not compile; see the message above")
registerTsx()
register("./hooks.js", { parentURL: import.meta.url, data: { srcUrl: `${pathToFileURL(srcDir).href}/`, distUrl: `${pathToFileURL(distDir).href}/src/` } })
