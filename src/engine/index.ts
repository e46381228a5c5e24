// The engine's public API, for the stage library (`stages/`) and pipeline files (`pipelines/`).
//
// A stage (one file per stage kind in stages/):
//
//   export const Samples = Artifact.file("Samples")              // or Artifact.json(name, schema), Artifact.tensors(name)
//   export const sample = stage({
//     name: "sample", version: 1,                                  // bump version when results change
//     params: Schema.Struct({ temperature: Schema.Number, n: Schema.Int, batchSize: Schema.Int }),
//     unkeyed: ["batchSize"],                                      // params that do not change results
//     inputs: { model: Directory, prompts: File },                 // artifact types; wiring is type-checked
//     output: Samples,
//     resources: { gpu: 1, memoryMB: 8000 },                       // gpu > 0 runs in a child process per node
//     run: ({ params, inputs, ctx }) => Effect.gen(function* () { ... return { path } }),
//   })
//
// A pipeline file (pipelines/*.ts) default-exports a pipeline built by calling stages:
//
//   const model = external.dir("models/tiny-llama", { name: "model" })       // --set model.path=DIR replaces it
//   const samples = sample({ temperature: sweep([0.7, 1.0]), n: 8, batchSize: 16 }, { model, prompts: external.file("data/q.txt") })
//   const report = summarize({}, { samples })                                  // a JSON output with a `markdown` field
//   export default pipeline("blue", { samples }, {
//     publish: { "report.json": report, "report.md": { from: report, as: (r) => r.markdown } },  // into runs/<id>/
//     print: ["report.md"],                                                    // `pipe run` prints it after its summary
//   })
//
// Published files are written after every run, a fully cached one too; a swept node writes one file
// per instance (`report[temperature=0.7].md`). `--set name.param=value` overrides a stage call's param.
//
// Fan-in over a sweep: a stage input declared `gathered(Metrics)` takes `gather(node)` and receives
// every instance's value with its sweep coordinates ([{ coords: { lr: 0.001 }, value }, ...]);
// `gather(node, { over: ["lr"] })` gathers along lr only (one gathering instance per value of the
// other sweeps). stages/table.ts turns a gather into a published sweep table.
//
// See tests/engine/fixtures/example.ts (sweeps, zip) and tests/engine/fixtures/stages.ts (JSON, file and
// tensor outputs, a checkpointing stage in a child process, retries) for complete, runnable examples.
export { Artifact, decodeArtifact, Directory, File } from "./artifact.ts"
export type {
  ArtifactType,
  DirectoryArtifact,
  FileArtifact,
  FileOutput,
  FileRef,
  JsonArtifact,
  OutputOf,
  TensorsArtifact,
  TensorsOutput,
  TensorsValue,
  ValueOf,
} from "./artifact.ts"
export { external, pipeline, stage, sweep, zip, Sweep } from "./stage.ts"
export { AnyJson, gather, gathered } from "./gather.ts"
export type { Coordinates, Gather, GatheredArtifact, GatherOptions, Point } from "./gather.ts"
export type {
  CallOptions,
  Device,
  External,
  ExternalOptions,
  Node,
  Pipeline,
  PipelineOptions,
  PublishEntry,
  PublishWriter,
  Resources,
  Source,
  Stage,
  StageContext,
  StageSpec,
} from "./stage.ts"
export { ArtifactError, CacheError, CorruptArtifact, errorMessage, ExternalInputError, NodeFailed, ParamsError, PipelineError, StageError, StorageError } from "./errors.ts"
export { Store } from "./store.ts"
export { planFile, runPipeline, type RunConfig, type RunResult } from "./run.ts"
export type { PublishedFile } from "./publish.ts"
export type { NodeOutcome, RunSummary } from "./scheduler.ts"
export { explainPlan, type Explanation } from "./explain.ts"
export { lineReporter, barReporter, silentReporter, type Reporter } from "./progress.ts"
