// Makes TypeScript files importable in the compiled CLI, which imports this before it loads a
// pipeline file: tsx for the user's pipeline and stage files, then hooks.js on top of it, so their
// imports of src/**/*.ts resolve to the compiled modules the CLI itself runs. (A child process that
// runs one node loads everything through tsx: a process of its own, so one engine there too.)
import { register } from "node:module"
import { pathToFileURL } from "node:url"
import { register as registerTsx } from "tsx/esm/api"
import { distDir, srcDir } from "./build.js"

registerTsx()
register("./hooks.js", { parentURL: import.meta.url, data: { srcUrl: `${pathToFileURL(srcDir).href}/`, distUrl: `${pathToFileURL(distDir).href}/src/` } })
