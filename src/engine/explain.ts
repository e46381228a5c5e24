// Why a node is cached or must run: its cache key's components (version, params, input hashes)
// compared with the node's previous execution. Used by `--dry-run`, `pipe status` and `pipe why`.
import { canonicalJson } from "./hash.ts"
import { cacheKey, inputHash, type Plan } from "./plan.ts"
import type { ExecutionRow, Store } from "./store.ts"

export interface KeyComponents {
  readonly version: number
  readonly params: Readonly<Record<string, unknown>>
  readonly inputs: Readonly<Record<string, string>>
}

export const componentsOf = (e: ExecutionRow): KeyComponents => ({
  version: e.version,
  params: JSON.parse(e.params),
  inputs: JSON.parse(e.inputs),
})

const show = (v: unknown) => (v === undefined ? "(unset)" : canonicalJson(v))

/** The differences between two sets of key components, one line each. */
export const diffComponents = (before: KeyComponents, after: KeyComponents): ReadonlyArray<string> => {
  const out: Array<string> = []
  if (before.version !== after.version) out.push(`version ${before.version} -> ${after.version}`)
  for (const k of new Set([...Object.keys(before.params), ...Object.keys(after.params)]))
    if (show(before.params[k]) !== show(after.params[k])) out.push(`param ${k}: ${show(before.params[k])} -> ${show(after.params[k])}`)
  for (const k of new Set([...Object.keys(before.inputs), ...Object.keys(after.inputs)]))
    if (before.inputs[k] !== after.inputs[k])
      out.push(`input ${k}: ${before.inputs[k]?.slice(0, 12) ?? "(none)"} -> ${after.inputs[k]?.slice(0, 12) ?? "(none)"}`)
  return out
}

export interface Explanation {
  readonly name: string
  readonly stage: string
  readonly state: "cached" | "run" | "pending"
  readonly reason: string
  readonly key?: string
  /** The stage's source file changed since the cached result was computed (and its version was not bumped). */
  readonly sourceChanged: boolean
}

export const explainPlan = (store: Store, plan: Plan, rerun: ReadonlyArray<string> = []): ReadonlyArray<Explanation> => {
  const outputs = new Map<number, string>()
  const latest = store.latestByNode()
  const forced = new Set(rerun)
  return plan.nodes.map((n): Explanation => {
    const base = { name: n.name, stage: n.stage.spec.name, sourceChanged: false }
    const unknown = n.deps.filter((d) => !outputs.has(d))
    // a gathering node names how many instances it gathers instead of listing them
    const gathers = n.inputs.flatMap(([, i]) => (i.kind === "gather" ? [`gathers ${i.points.length} instances of ${i.of}`] : [])).join(", ")
    const why = (reason: string) => (gathers ? `${gathers}; ${reason}` : reason)
    if (unknown.length > 0) {
      const after = gathers ? `${gathers}; waits for ${unknown.length} not done yet` : `after ${unknown.map((d) => plan.nodes[d].name).join(", ")}`
      return { ...base, state: "pending", reason: `${after} (stays cached if their outputs come out unchanged)` }
    }
    const inputs = n.inputs.map(([name, i]) => [name, inputHash(i, (d) => outputs.get(d)!)] as const)
    const key = cacheKey(n, inputs)
    const hit = store.lookup(key)
    if (hit) outputs.set(n.index, hit.hash)
    const producer = hit ? store.cachedExecution(key) : undefined
    const sourceChanged = producer?.source_hash != null && n.sourceHash !== undefined && producer.source_hash !== n.sourceHash
    if (forced.has(n.label) || forced.has(n.stage.spec.name)) {
      outputs.delete(n.index)
      return { ...base, key, state: "run", reason: "--rerun", sourceChanged }
    }
    if (hit) return { ...base, key, state: "cached", reason: sourceChanged ? "cached, but the stage's source changed since (use --rerun)" : "cached", sourceChanged }
    const prev = latest.get(n.name)
    if (prev === undefined) return { ...base, key, state: "run", reason: why("never run") }
    const diff = diffComponents(componentsOf(prev), { version: n.stage.spec.version, params: n.keyParams, inputs: Object.fromEntries(inputs) })
    const reason =
      diff.length > 0 ? diff.join("; ")
      : prev.status === "succeeded" ? "previous result is gone (gc'd or corrupt)"
      : `previous execution ${prev.status}${prev.error ? `: ${prev.error.split("\n")[0]}` : ""}`
    return { ...base, key, state: "run", reason: why(reason) }
  })
}
