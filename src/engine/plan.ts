// Planning: load a pipeline file, apply `--set` overrides (params of stage calls, paths of named
// external inputs), expand sweeps into node instances, decode params, and give every instance a
// recipe hash. Instances with equal recipes are one node.
//
// Two hashes identify a node:
//   recipe  = hash(stage, version, keyed params, recipes of input nodes | content hashes of external inputs)
//             known at plan time; dedupes nodes and lets a child process find its node.
//   key     = hash(stage, version, keyed params, content hashes of input artifacts)
//             the cache key, known once inputs exist; an upstream rerun that yields identical bytes
//             leaves it unchanged (early cutoff).
import { Cause, Exit, Schema } from "effect"
import { existsSync } from "node:fs"
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"
import type { ArtifactType } from "./artifact.ts"
import { ExternalInputError, ParamsError, PipelineError, errorMessage } from "./errors.ts"
import { canonicalPoints, pointsHash, type Coordinates, type Gather, type PlannedPoint, type StoredPoint } from "./gather.ts"
import { canonicalJson, hashJson } from "./hash.ts"
import { sourceHash } from "./source.ts"
import type { AnyStage, External, Pipeline, PublishWriter, Template } from "./stage.ts"
import { isPipeline, isSweep, sweep, type Sweep } from "./stage.ts"

/** Every instance of the call `of` (or those of one value of its other sweeps), in canonical order. */
export interface GatherInput {
  readonly kind: "gather"
  readonly of: string
  readonly points: ReadonlyArray<PlannedPoint>
}

export type PlanInput =
  | { readonly kind: "node"; readonly node: number }
  | { readonly kind: "external"; readonly path: string; readonly hash: string; readonly type: ArtifactType }
  | GatherInput

/** An external input as planned: its absolute path after `--set <name>.path=...`, and content hash. */
export interface PlanExternal {
  readonly name: string | undefined
  readonly path: string
  readonly hash: string
}

/** A file the run writes into its folder (see `PipelineOptions.publish`). */
export interface PlanPublish {
  readonly file: string
  /** The published call's instances (several when it is swept). */
  readonly nodes: ReadonlyArray<number>
  readonly as: ((value: unknown) => unknown) | undefined
  readonly write: PublishWriter | undefined
  readonly print: boolean
}

export interface PlanNode {
  readonly index: number
  readonly recipe: string
  /** Display name: the call's name plus the sweep values that distinguish it, e.g. `train[lr=0.001]`. */
  readonly name: string
  /** The call's name (`--set` and `--rerun` address it). */
  readonly label: string
  /** The sweep values that distinguish this instance, by param name (qualified by call name where two sweeps share one). */
  readonly coords: Coordinates
  readonly stage: AnyStage
  /** Decoded params, as `run` receives them. */
  readonly params: Readonly<Record<string, unknown>>
  /** Encoded params that are part of the key. */
  readonly keyParams: Readonly<Record<string, unknown>>
  /** Encoded params declared `unkeyed`. */
  readonly unkeyedParams: Readonly<Record<string, unknown>>
  readonly inputs: ReadonlyArray<readonly [string, PlanInput]>
  readonly deps: ReadonlyArray<number>
  readonly dependents: Array<number>
  readonly seed: number
  readonly sourceHash: string | undefined
}

export interface Plan {
  readonly pipeline: string
  readonly file: string
  readonly nodes: ReadonlyArray<PlanNode>
  readonly externals: ReadonlyArray<PlanExternal>
  readonly publish: ReadonlyArray<PlanPublish>
}

export interface PlanOptions {
  /** `label.param=value` (value parsed as JSON when it parses, else taken as a string), or `name.path=PATH` for a named external. */
  readonly overrides?: ReadonlyArray<string>
  readonly hashExternal: (path: string, kind: "file" | "directory") => string
}

/** Imports a pipeline file and checks that it default-exports a pipeline. */
export const loadPipeline = async (file: string): Promise<Pipeline> => {
  const abs = resolve(file)
  if (!existsSync(abs)) throw new PipelineError({ file, message: `${file}: no such pipeline file` })
  let mod: { default?: unknown }
  try {
    mod = await import(pathToFileURL(abs).href)
  } catch (e) {
    throw new PipelineError({ file, message: `${file}: failed to load: ${errorMessage(e)}` })
  }
  if (!isPipeline(mod.default))
    throw new PipelineError({
      file,
      message: `${file}: the default export must be a pipeline (export default pipeline("name", { ... })), got ${mod.default === undefined ? "no default export" : typeof mod.default}`,
    })
  return mod.default
}

const parseOverride = (text: string, pipeline: string) => {
  const eq = text.indexOf("=")
  const dot = text.indexOf(".")
  if (eq < 0 || dot < 0 || dot > eq)
    throw new ParamsError({ pipeline, node: "--set", message: `--set ${text}: expected name.param=value` })
  const raw = text.slice(eq + 1)
  const path = text.slice(dot + 1, eq).split(".")
  // `name.param=sweep([1, 2])`: one node instance per value, as sweep() in a pipeline file. Anything
  // starting with `sweep(` is meant as one: a malformed one is reported as such, not taken as a string.
  if (raw.trim().startsWith("sweep(")) {
    const swept = /^sweep\((.*)\)$/s.exec(raw.trim())
    let values: unknown
    try {
      values = swept === null ? undefined : JSON.parse(swept[1])
    } catch {
      values = undefined
    }
    if (!Array.isArray(values) || values.length === 0 || path.length !== 1)
      throw new ParamsError({ pipeline, node: "--set", message: `--set ${text}: expected name.param=sweep([v1, v2, ...]) with a JSON array of values, for a top-level param` })
    return { label: text.slice(0, dot), path, value: sweep(values), raw }
  }
  let value: unknown = raw
  try {
    value = JSON.parse(raw)
  } catch {
    // not JSON: a plain string value
  }
  return { label: text.slice(0, dot), path, value, raw }
}

const setPath = (obj: Record<string, unknown>, path: ReadonlyArray<string>, value: unknown): Record<string, unknown> => {
  const [head, ...rest] = path
  if (rest.length === 0) return { ...obj, [head]: value }
  const inner = obj[head]
  return { ...obj, [head]: setPath(typeof inner === "object" && inner !== null ? (inner as Record<string, unknown>) : {}, rest, value) }
}

const fieldNames = (stage: AnyStage): ReadonlyArray<string> | undefined => {
  const ast = (stage.spec.params as unknown as Schema.Top).ast as { propertySignatures?: ReadonlyArray<{ name: PropertyKey }> }
  return ast.propertySignatures?.map((p) => String(p.name))
}

interface Instance {
  readonly assignment: ReadonlyMap<symbol, number>
  readonly node: number
}

/** Expands a pipeline into its node instances (topologically ordered: inputs come first). */
export const plan = (pipeline: Pipeline, file: string, options: PlanOptions): Plan => {
  const pname = `${file} (pipeline "${pipeline.name}")`

  // Templates reachable from the targets and published nodes, inputs before the calls that use them.
  const ordered: Array<Template> = []
  const externals: Array<External<ArtifactType>> = []
  const seen = new Set<Template>()
  const visit = (t: Template) => {
    if (seen.has(t)) return
    seen.add(t)
    for (const s of Object.values(t.inputs))
      if (s._tag === "Node") visit(s.template)
      else if (s._tag === "Gather") visit(s.node.template)
      else externals.push(s)
    ordered.push(t)
  }
  for (const n of [...pipeline.targets, ...pipeline.publish.map((p) => p.node)]) visit(n.template)

  // Named externals, by name: the path as declared, until `--set <name>.path=...` replaces it.
  const labels = new Set(ordered.map((t) => t.label))
  const externalPaths = new Map<string, string>()
  for (const e of externals) {
    if (e.name === undefined) continue
    if (labels.has(e.name))
      throw new ParamsError({ pipeline: pname, node: e.name, message: `${pname}: "${e.name}" names both a stage call and the external input ${e.path}; rename one (--set ${e.name}.path=... could mean either)` })
    const declared = externalPaths.get(e.name)
    if (declared !== undefined && resolve(declared) !== resolve(e.path))
      throw new ParamsError({ pipeline: pname, node: e.name, message: `${pname}: two external inputs are named "${e.name}" with different paths (${declared}, ${e.path}); give them different names` })
    externalPaths.set(e.name, e.path)
  }

  // Overrides.
  const params = new Map<Template, Record<string, unknown>>(ordered.map((t) => [t, { ...t.params }]))
  for (const text of options.overrides ?? []) {
    const o = parseOverride(text, pname)
    if (externalPaths.has(o.label)) {
      const path = typeof o.value === "string" ? o.value : o.raw // `model.path=2024` is a directory, not a number
      if (o.path.join(".") !== "path" || path === "")
        throw new ParamsError({ pipeline: pname, node: o.label, message: `${pname}: --set ${text}: "${o.label}" is an external input; its one settable field is "path" (--set ${o.label}.path=PATH)` })
      externalPaths.set(o.label, path)
      continue
    }
    const matches = ordered.filter((t) => t.label === o.label)
    if (matches.length === 0)
      throw new ParamsError({
        pipeline: pname,
        node: o.label,
        message: `${pname}: --set ${text}: no node named "${o.label}" (nodes: ${[...labels].join(", ")}; external inputs: ${[...externalPaths.keys()].join(", ") || "none named"})`,
      })
    for (const t of matches) {
      const fields = fieldNames(t.stage)
      if (fields !== undefined && !fields.includes(o.path[0]))
        throw new ParamsError({ pipeline: pname, node: o.label, message: `${pname}: --set ${text}: stage "${t.stage.spec.name}" has no param "${o.path[0]}" (params: ${fields.join(", ")})` })
      params.set(t, setPath(params.get(t)!, o.path, o.value))
    }
  }

  // Axis descriptions for display names.
  const axisLabel = new Map<symbol, { template: Template; cols: ReadonlyArray<readonly [string, Sweep<unknown>]>; text: (i: number) => string }>()
  for (const t of ordered) {
    const byAxis = new Map<symbol, Array<[string, Sweep<unknown>]>>()
    for (const [k, v] of Object.entries(params.get(t)!)) if (isSweep(v)) byAxis.set(v.axis, [...(byAxis.get(v.axis) ?? []), [k, v]])
    for (const [axis, cols] of byAxis) {
      const len = cols[0][1].values.length
      if (cols.some(([, s]) => s.values.length !== len))
        throw new ParamsError({ pipeline: pname, node: t.label, message: `${pname}: node "${t.label}": zipped params have different lengths` })
      // a zip axis spanning several calls is named after the first (upstream-most) of them
      if (axisLabel.has(axis)) continue
      axisLabel.set(axis, {
        template: t,
        cols,
        text: (i) => cols.map(([k, s]) => `${k}=${typeof s.values[i] === "string" ? s.values[i] : canonicalJson(s.values[i])}`).join(","),
      })
    }
  }

  // Coordinates of an assignment along `axes`: every column of each axis by its param name, qualified
  // by the declaring call (`sum.scale`) where two axes use the same name.
  const coordinates = (assignment: ReadonlyMap<symbol, number>, axes: ReadonlyArray<symbol>): Coordinates => {
    const cols = axes.flatMap((a) => {
      const l = axisLabel.get(a)!
      return l.cols.map(([param, s]) => ({ param, qualified: `${l.template.label}.${param}`, value: s.values[assignment.get(a)!] }))
    })
    const uses = new Map<string, number>()
    for (const c of cols) uses.set(c.param, (uses.get(c.param) ?? 0) + 1)
    return Object.fromEntries(cols.map((c) => [uses.get(c.param)! > 1 ? c.qualified : c.param, c.value]))
  }

  // The axes `gather(node, { over })` gathers along: those with a column named as listed.
  const overAxes = (t: Template, source: Gather<ArtifactType>, upAxes: ReadonlyArray<symbol>): ReadonlyArray<symbol> => {
    if (source.over === undefined) return upAxes
    const names = (a: symbol) => axisLabel.get(a)!.cols.flatMap(([param]) => [param, `${axisLabel.get(a)!.template.label}.${param}`])
    return source.over.map((name) => {
      const axis = upAxes.find((a) => names(a).includes(name))
      if (axis === undefined)
        throw new ParamsError({
          pipeline: pname,
          node: t.label,
          message: `${pname}: node "${t.label}": gather(${source.node.template.label}, { over: [${source.over!.map((o) => JSON.stringify(o)).join(", ")}] }): "${name}" is not a param swept upstream of ${source.node.template.label} (swept: ${upAxes.map((a) => names(a)[0]).join(", ") || "none"})`,
        })
      return axis
    })
  }

  // a named external's error says which --set repoints it
  const hashNamed = (path: string, kind: "file" | "directory", name: string | undefined): string => {
    try {
      return options.hashExternal(path, kind)
    } catch (e) {
      if (name === undefined || !(e instanceof ExternalInputError)) throw e
      throw new ExternalInputError({ path: e.path, message: `${e.message} (external input "${name}"; set it with --set ${name}.path=...)` })
    }
  }

  const nodes: Array<PlanNode> = []
  const planned = new Map<string, PlanExternal>() // by absolute path
  const byRecipe = new Map<string, number>()
  const instancesOf = new Map<Template, ReadonlyArray<Instance>>()
  const usedNames = new Set<string>()
  const labelCount = new Map<string, number>()

  for (const t of ordered) {
    const stage = t.stage
    const spec = stage.spec
    const raw = params.get(t)!
    const nth = (labelCount.get(t.label) ?? 0) + 1
    labelCount.set(t.label, nth)
    const baseLabel = nth === 1 ? t.label : `${t.label}#${nth}`

    // Join upstream instances on the axes they share, then cross with this call's own sweeps.
    type Partial = { assignment: Map<symbol, number>; inputs: Array<readonly [string, PlanInput]> }
    let partials: Array<Partial> = [{ assignment: new Map(), inputs: [] }]
    let axes = new Set<symbol>()
    for (const [name, source] of Object.entries(t.inputs)) {
      const expected = spec.inputs[name]
      if (expected === undefined)
        throw new ParamsError({ pipeline: pname, node: t.label, message: `${pname}: node "${t.label}": stage "${spec.name}" has no input "${name}"` })
      if ((source._tag === "Gather") !== (expected._tag === "gathered"))
        throw new ParamsError({
          pipeline: pname,
          node: t.label,
          message:
            expected._tag === "gathered" ?
              `${pname}: node "${t.label}": input "${name}" gathers ${expected.element.name} values: wire it with gather(node)`
            : `${pname}: node "${t.label}": input "${name}" takes one ${expected.name} value, not gather(...)`,
        })
      if (source._tag === "Gather") {
        // Group the instances by the sweeps not gathered over; each group feeds one instance of this call.
        const ups = instancesOf.get(source.node.template)!
        const upAxes = [...(ups[0]?.assignment.keys() ?? [])]
        const over = overAxes(t, source, upAxes)
        const keep = upAxes.filter((a) => !over.includes(a))
        const groups = new Map<string, { assignment: Map<symbol, number>; points: Array<PlannedPoint> }>()
        for (const u of ups) {
          const id = keep.map((a) => u.assignment.get(a)).join(",")
          const group = groups.get(id) ?? { assignment: new Map(keep.map((a) => [a, u.assignment.get(a)!])), points: [] }
          group.points.push({ coords: coordinates(u.assignment, over), node: u.node })
          groups.set(id, group)
        }
        const shared = keep.filter((a) => axes.has(a))
        const next: Array<Partial> = []
        for (const p of partials)
          for (const g of groups.values())
            if (shared.every((a) => p.assignment.get(a) === g.assignment.get(a)))
              next.push({
                assignment: new Map([...p.assignment, ...g.assignment]),
                inputs: [...p.inputs, [name, { kind: "gather", of: source.node.template.label, points: canonicalPoints(g.points) }]],
              })
        partials = next
        axes = new Set([...axes, ...keep])
        continue
      }
      if (source._tag === "External") {
        const path = resolve(source.name === undefined ? source.path : externalPaths.get(source.name)!)
        const known = planned.get(path)
        const hash = known?.hash ?? hashNamed(path, source.output._tag === "directory" ? "directory" : "file", source.name)
        planned.set(path, { name: known?.name ?? source.name, path, hash })
        for (const p of partials) p.inputs.push([name, { kind: "external", path, hash, type: source.output }])
        continue
      }
      const ups = instancesOf.get(source.template)!
      const upAxes = new Set(ups[0]?.assignment.keys() ?? [])
      const shared = [...axes].filter((a) => upAxes.has(a))
      const sig = (m: ReadonlyMap<symbol, number>) => shared.map((a) => m.get(a)).join(",")
      const index = new Map<string, Array<Instance>>()
      for (const u of ups) {
        const bucket = index.get(sig(u.assignment))
        if (bucket) bucket.push(u)
        else index.set(sig(u.assignment), [u])
      }
      const next: Array<Partial> = []
      for (const p of partials)
        for (const u of index.get(sig(p.assignment)) ?? [])
          next.push({ assignment: new Map([...p.assignment, ...u.assignment]), inputs: [...p.inputs, [name, { kind: "node", node: u.node }]] })
      partials = next
      axes = new Set([...axes, ...upAxes])
    }
    for (const name of Object.keys(spec.inputs))
      if (!(name in t.inputs))
        throw new ParamsError({ pipeline: pname, node: t.label, message: `${pname}: node "${t.label}": input "${name}" is not connected` })
    const ownAxes = new Map<symbol, number>()
    for (const v of Object.values(raw)) if (isSweep(v)) ownAxes.set(v.axis, v.values.length)
    for (const [axis, len] of ownAxes) {
      const next: Array<Partial> = []
      for (const p of partials)
        // an axis that came in with an input (a zip column used upstream) is already fixed
        if (p.assignment.has(axis)) next.push(p)
        else for (let i = 0; i < len; i++) next.push({ assignment: new Map([...p.assignment, [axis, i]]), inputs: p.inputs })
      partials = next
    }

    const instances: Array<Instance> = []
    for (const p of partials) {
      const encoded = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, isSweep(v) ? v.values[p.assignment.get(v.axis)!] : v]))
      const shown = [...p.assignment].map(([axis, i]) => {
          const a = axisLabel.get(axis)!
          return a.template === t ? a.text(i) : a.text(i).split(",").map((s) => `${a.template.label}.${s}`).join(",")
        })
      const name = shown.length > 0 ? `${baseLabel}[${shown.join(",")}]` : baseLabel

      const decoded = Schema.decodeUnknownExit(spec.params as unknown as Schema.Codec<object, unknown>)(encoded, { errors: "all", onExcessProperty: "error" })
      if (Exit.isFailure(decoded))
        throw new ParamsError({
          pipeline: pname,
          node: name,
          message: `${pname}: node "${name}" (stage "${spec.name}"): invalid params:\n  ${errorMessage(Cause.squash(decoded.cause)).split("\n").join("\n  ")}`,
        })
      const normal = Schema.encodeUnknownSync(spec.params as unknown as Schema.Codec<object, unknown>)(decoded.value) as Record<string, unknown>
      const unkeyed = new Set<string>(spec.unkeyed ?? [])
      const keyParams = Object.fromEntries(Object.entries(normal).filter(([k]) => !unkeyed.has(k)))
      const unkeyedParams = Object.fromEntries(Object.entries(normal).filter(([k]) => unkeyed.has(k)))
      const recipe = hashJson({
        stage: spec.name,
        version: spec.version,
        params: keyParams,
        inputs: Object.fromEntries(
          p.inputs.map(([k, i]) => [
            k,
            i.kind === "node" ? `node:${nodes[i.node].recipe}`
            : i.kind === "gather" ? `gather:${hashJson(i.points.map((pt) => ({ coords: pt.coords, recipe: nodes[pt.node].recipe })))}`
            : `external:${i.hash}`,
          ]),
        ),
      })
      let index = byRecipe.get(recipe)
      if (index === undefined) {
        index = nodes.length
        byRecipe.set(recipe, index)
        let unique = name
        for (let k = 2; usedNames.has(unique); k++) unique = `${name}#${k}`
        usedNames.add(unique)
        const seedParam = (decoded.value as { seed?: unknown }).seed
        const deps = [...new Set(p.inputs.flatMap(([, i]) => (i.kind === "node" ? [i.node] : i.kind === "gather" ? i.points.map((pt) => pt.node) : [])))]
        nodes.push({
          index,
          recipe,
          name: unique,
          label: t.label,
          coords: coordinates(p.assignment, [...p.assignment.keys()]),
          stage,
          params: decoded.value as Record<string, unknown>,
          keyParams,
          unkeyedParams,
          inputs: p.inputs,
          deps,
          dependents: [],
          seed: typeof seedParam === "number" ? seedParam : parseInt(hashJson({ stage: spec.name, params: keyParams }).slice(0, 8), 16),
          sourceHash: sourceHash(stage.sourceFile),
        })
        for (const d of deps) nodes[d].dependents.push(index)
      }
      instances.push({ assignment: p.assignment, node: index })
    }
    instancesOf.set(t, instances)
  }
  const publish = pipeline.publish.map((p): PlanPublish => ({
    file: p.file,
    nodes: [...new Set(instancesOf.get(p.node.template)!.map((i) => i.node))],
    as: p.as,
    write: p.write,
    print: pipeline.print.includes(p.file),
  }))
  return { pipeline: pipeline.name, file, nodes, externals: [...planned.values()], publish }
}

/** A gathered input's points with their artifact hashes (`outputOf` gives a done node's output hash). */
export const storedPoints = (input: GatherInput, outputOf: (node: number) => string): ReadonlyArray<StoredPoint> =>
  input.points.map((p) => ({ coords: p.coords, hash: outputOf(p.node) }))

/** The content hash of an input once its producers are done: a node's artifact hash, an external's, or a gather's points hash. */
export const inputHash = (input: PlanInput, outputOf: (node: number) => string): string =>
  input.kind === "external" ? input.hash
  : input.kind === "node" ? outputOf(input.node)
  : pointsHash(storedPoints(input, outputOf))

/** The points of each gathered input of `node`, as an executor loads them. */
export const gatheredInputs = (node: PlanNode, outputOf: (node: number) => string): Readonly<Record<string, ReadonlyArray<StoredPoint>>> =>
  Object.fromEntries(node.inputs.flatMap(([name, i]) => (i.kind === "gather" ? [[name, storedPoints(i, outputOf)]] : [])))

/** The cache key of a node once the content hashes of its inputs are known. */
export const cacheKey = (node: PlanNode, inputHashes: ReadonlyArray<readonly [string, string]>): string =>
  hashJson({
    stage: node.stage.spec.name,
    version: node.stage.spec.version,
    params: node.keyParams,
    inputs: Object.fromEntries(inputHashes),
  })
