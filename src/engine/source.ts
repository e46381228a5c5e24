// The source hash of a stage, recorded with its results so `pipe status` can say "cached, but the
// stage's source changed since": the file that declares the stage and, transitively, every local
// module it imports (relative specifiers such as "./distill.ts" or "../../src/models/forward.ts"),
// so an edit to a helper a stage computes with is seen too. Packages are not followed, nor the
// engine itself (this folder): the engine runs stages but does not change what they compute.
import { existsSync, readFileSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { sha256 } from "./hash.ts"

const engineDir = import.meta.dirname

// import ... from "./x", export ... from "./x", import "./x", import("./x")
const localImport = /(?:\bfrom\s*|\bimport\s*\(?\s*)["'](\.{1,2}\/[^"']+)["']/g

const localImports = (file: string, text: string): string[] =>
  [...text.matchAll(localImport)].map((m) => resolve(dirname(file), m[1])).filter((f) => existsSync(f) && dirname(f) !== engineDir)

const closureHashes = new Map<string, string>()

/** sha256 over the file and its local import closure (in a stable order); undefined without a file. */
export const sourceHash = (file: string | undefined): string | undefined => {
  if (file === undefined || !existsSync(file)) return undefined
  const cached = closureHashes.get(file)
  if (cached !== undefined) return cached
  const seen = new Map<string, string>()
  const visit = (f: string) => {
    if (seen.has(f)) return
    const text = readFileSync(f, "utf8")
    seen.set(f, sha256(text))
    for (const g of localImports(f, text)) visit(g)
  }
  visit(resolve(file))
  const h = sha256([...seen].sort(([a], [b]) => (a < b ? -1 : 1)).map(([f, fh]) => `${f}:${fh}`).join("\n"))
  closureHashes.set(file, h)
  return h
}
