// Publishing: after a run (a fully cached one too), write the results a pipeline names in
// `publish` into the run folder: JSON values pretty-printed or rendered by `as`, file and tensor
// payloads copied or handed to a `write` (which may make a directory, e.g. a PEFT adapter). A swept
// node writes one entry per instance; failed nodes write nothing.
import { Schema } from "effect"
import { copyFileSync, writeFileSync } from "node:fs"
import { extname, join } from "node:path"
import { errorMessage } from "./errors.ts"
import type { Plan, PlanNode } from "./plan.ts"
import type { NodeOutcome } from "./scheduler.ts"
import type { Store } from "./store.ts"

/** One published file, or why it could not be written (an `as` that threw, a payload gone). */
export type PublishedFile =
  | { readonly file: string; readonly node: string; readonly path: string; readonly print: boolean }
  | { readonly file: string; readonly node: string; readonly error: string }

/** Longest file name written; names of swept instances with long string values are cut there. */
const MAX_NAME = 200

/** A node's display name made safe as a file name (sweep coordinates keep their `[a=1,b=2]`). */
export const fileSafe = (name: string): string => name.replace(/[/\\:*?"<>|\x00-\x1f]/g, "_")

/**
 * `compare.md` for the instance `compare[rank=8]` of a swept call is `compare[rank=8].md`: the part of
 * the display name after the call's name goes before the extension, made safe for file systems.
 */
const instanceFile = (file: string, node: PlanNode): string => {
  const ext = extname(file)
  const stem = file.slice(0, file.length - ext.length)
  const suffix = fileSafe(node.name.slice(node.label.length))
  const name = `${stem}${suffix}${ext}`
  return name.length <= MAX_NAME ? name : `${stem}${suffix.slice(0, MAX_NAME - stem.length - ext.length - 9)}~${node.recipe.slice(0, 8)}${ext}`
}

const contents = (store: Store, node: PlanNode, hash: string, as: ((value: unknown) => unknown) | undefined): string | Uint8Array | { copy: string } => {
  const type = node.stage.spec.output
  if (type._tag !== "json") return { copy: store.verifiedPath(hash).path }
  const encoded: unknown = JSON.parse(store.readJson(hash))
  if (as === undefined) return `${JSON.stringify(encoded, null, 2)}\n`
  const rendered = as(Schema.decodeUnknownSync(type.schema)(encoded))
  return typeof rendered === "string" || rendered instanceof Uint8Array ? rendered : `${JSON.stringify(rendered, null, 2)}\n`
}

/** Writes the plan's published files into `runDir` for the nodes that are done (`outcomes` is in plan order). */
export const publishResults = (store: Store, plan: Plan, outcomes: ReadonlyArray<NodeOutcome>, runDir: string): ReadonlyArray<PublishedFile> =>
  plan.publish.flatMap((p) =>
    p.nodes.flatMap((index): Array<PublishedFile> => {
      const node = plan.nodes[index]
      const outcome = outcomes[index]
      if ((outcome.status !== "succeeded" && outcome.status !== "cached") || outcome.output === undefined) return []
      const path = join(runDir, p.nodes.length > 1 ? instanceFile(p.file, node) : p.file)
      try {
        if (p.write !== undefined) {
          const externals = node.inputs.flatMap(([name, input]) => (input.kind === "external" ? [[name, input.path] as const] : []))
          p.write({ payload: store.verifiedPath(outcome.output).path, externals: Object.fromEntries(externals) }, path)
          return [{ file: p.file, node: node.name, path, print: p.print }]
        }
        const data = contents(store, node, outcome.output, p.as)
        if (typeof data === "object" && "copy" in data) copyFileSync(data.copy, path)
        else writeFileSync(path, data)
        return [{ file: p.file, node: node.name, path, print: p.print }]
      } catch (e) {
        return [{ file: p.file, node: node.name, error: `publish ${p.file} from ${node.name}: ${errorMessage(e)}` }]
      }
    }),
  )
