// The generated sweep pipeline the engine and CLI benchmarks run: `sources` source nodes, each
// feeding `fanout` work nodes (sources + sources * fanout nodes), every stage trivial, so what is
// measured is the engine's and the command's own overhead.
import { writeFileSync } from "node:fs"
import { join, resolve } from "node:path"

const repo = resolve(import.meta.dirname, "..")

const pipelineSource = (sources: number, fanout: number, isolate: boolean) => `
import { Effect, Schema } from ${JSON.stringify(join(repo, "node_modules/effect/dist/index.js"))}
import { Artifact, pipeline, stage, sweep } from ${JSON.stringify(join(repo, "src/engine/index.ts"))}
const Value = Artifact.json("Value", Schema.Number)
const source = stage({ name: "source", version: 1, params: Schema.Struct({ seed: Schema.Int }), inputs: {}, output: Value,
  run: ({ params }) => Effect.succeed(params.seed) })
const work = stage({ name: "work", version: 1, params: Schema.Struct({ k: Schema.Int, batch: Schema.Int }), unkeyed: ["batch"],
  inputs: { x: Value }, output: Value,${isolate ? ` resources: { isolate: "process" },` : ""} run: ({ params, inputs }) => Effect.succeed(inputs.x * 1000 + params.k) })
const x = source({ seed: sweep(${JSON.stringify(Array.from({ length: sources }, (_, i) => i))}) })
export default pipeline("bench", [work({ k: sweep(${JSON.stringify(Array.from({ length: fanout }, (_, i) => i))}), batch: 32 }, { x })])
`

/**
 * Writes the pipeline (and the package.json that makes .ts files ESM) into `dir`; returns its path and
 * node count. `isolate`: the work nodes run in a child process each (or a Slurm job), as GPU stages do.
 */
export const writeSweepPipeline = (dir: string, sources: number, fanout: number, isolate = false) => {
  const nodes = sources + sources * fanout
  writeFileSync(join(dir, "package.json"), '{ "type": "module" }\n')
  const file = join(dir, `sweep${nodes}${isolate ? "-isolated" : ""}.ts`)
  writeFileSync(file, pipelineSource(sources, fanout, isolate))
  return { file, nodes }
}
