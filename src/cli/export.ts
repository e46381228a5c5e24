// `pipe export <node> <dir>`: the adapter a training node produced, from its latest finished
// execution, written as a PEFT directory (adapter_config.json + adapter_model.safetensors) that
// PeftModel.from_pretrained and vLLM load. base_model_name_or_path names the model directory the
// node was trained on, read from that run's plan.json (runs/<id>/plan.json).
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { errorMessage } from "../engine/errors.ts"
import type { Store } from "../engine/store.ts"
import { ADAPTER_CONFIG_METADATA, exportAdapter } from "../models/peft.ts"
import { out, UsageError, type Command } from "./args.ts"
import { openStore, runsDir } from "./records.ts"

export class ExportError extends Data.TaggedError("ExportError")<{ readonly message: string }> {}

interface PlanJson {
  readonly externals: ReadonlyArray<{ readonly path: string }>
  readonly nodes: ReadonlyArray<{ readonly name: string; readonly inputs: Readonly<Record<string, string>> }>
}

/** The node's external inputs by name in a run's plan.json, or why they cannot be known. */
const externalInputs = (planFile: string, node: string): { readonly inputs: Record<string, string> } | { readonly missing: string } => {
  if (!fs.existsSync(planFile)) return { missing: `${planFile} no longer exists` }
  const plan = JSON.parse(fs.readFileSync(planFile, "utf8")) as PlanJson
  const entry = plan.nodes.find((n) => n.name === node)
  if (entry === undefined) return { missing: `${planFile} has no node ${node}` }
  const externals = new Set(plan.externals.map((e) => e.path))
  return { inputs: Object.fromEntries(Object.entries(entry.inputs).filter(([, p]) => externals.has(p))) }
}

/** Writes `node`'s adapter into `dir`; returns what was written, for the user. */
export const exportNode = (store: Store, runsDir: string, node: string, dir: string): Effect.Effect<string, ExportError> =>
  Effect.gen(function* () {
    const execution = store.executionsOf(node).find((e) => e.output !== null)
    if (execution === undefined)
      return yield* Effect.fail(new ExportError({ message: `no finished execution of a node named "${node}" (use the name shown by pipe show <run>, or a key prefix)` }))
    const stored = store.lookup(execution.key)
    if (stored === undefined)
      return yield* Effect.fail(new ExportError({ message: `${execution.node}: its output (key ${execution.key.slice(0, 12)}) is no longer in the cache; run the pipeline again` }))
    if (stored.kind !== "tensors")
      return yield* Effect.fail(new ExportError({ message: `${execution.node}: its output is a ${stored.kind} artifact (${stored.type}), not an adapter (pipe export writes the adapters of training nodes)` }))
    const payload = yield* Effect.try({
      try: () => store.verifiedPath(stored.hash).path,
      catch: (e) => new ExportError({ message: `${execution.node}: ${errorMessage(e)}` }),
    })
    const planFile = path.join(runsDir, execution.run_id, "plan.json")
    const found = yield* Effect.try({
      try: () => externalInputs(planFile, execution.node),
      catch: (e) => new ExportError({ message: `${planFile}: ${errorMessage(e)}` }),
    })
    const config = yield* Effect.mapError(exportAdapter(payload, dir, "inputs" in found ? found.inputs : {}), (e) =>
      new ExportError({ message: `${execution.node}: ${e.message}${e.field === `__metadata__.${ADAPTER_CONFIG_METADATA}` ? " (pipe export writes the adapters of training nodes)" : ""}` }),
    )
    const base = config.baseModelNameOrPath
    return [
      `wrote ${path.join(dir, "adapter_config.json")} and adapter_model.safetensors`,
      `from ${execution.node} (key ${execution.key.slice(0, 12)}, run ${execution.run_id})`,
      `base_model_name_or_path: ${base === null ? "null" : base}${"missing" in found ? ` (the model is unknown: ${found.missing})` : ""}`,
    ].join("\n")
  })

export const command: Command = {
  run: async (args) => {
    if (args.positional.length !== 2) throw new UsageError("pipe export expects a node and a directory")
    out(await Effect.runPromise(exportNode(openStore(args), runsDir(args), args.positional[0], args.positional[1])))
    return 0
  },
}
