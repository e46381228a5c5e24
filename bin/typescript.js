// Makes TypeScript files importable: tsx for the user's pipeline and stage files and, when dist/ is
// built, hooks.js on top of it, so their imports of src/**/*.ts resolve to the compiled modules the
// CLI itself runs. The compiled CLI imports this before it loads a pipeline file; a child process that
// runs one node gets it with `--import` (src/engine/executor.ts), so its entry, child.ts, and everything
// it loads resolve to dist/ as well.
import { register } from "node:module"
import { pathToFileURL } from "node:url"
import { register as registerTsx } from "tsx/esm/api"
import { distDir, ensureBuilt, srcDir } from "./build.js"

registerTsx()
if (await ensureBuilt())
  register("./hooks.js", { parentURL: import.meta.url, data: { srcUrl: `${pathToFileURL(srcDir).href}/`, distUrl: `${pathToFileURL(distDir).href}/src/` } })
