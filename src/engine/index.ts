// The engine's public API, for the stage library (`stages/`) and pipeline files (`pipelines/`).
//
//   const corpus = external.file("data/questions.jsonl")
//   const tokens = tokenize({ maxLength: 512 }, { text: corpus })
//   const model = train({ lr: sweep([1e-3, 1e-4]), batchSize: 8 }, { tokens })
//   export default pipeline("example", { model })
//
// See tests/engine/fixtures/example.ts for a complete, runnable pipeline.
export { Artifact, Directory, File } from "./artifact.ts"
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
export type { CallOptions, Device, External, Node, Pipeline, Resources, Source, Stage, StageContext, StageSpec } from "./stage.ts"
export { CorruptArtifact, ExternalInputError, NodeFailed, ParamsError, PipelineError } from "./errors.ts"
export { Store } from "./store.ts"
export { planFile, runPipeline, type RunConfig } from "./run.ts"
export type { NodeOutcome, RunSummary } from "./scheduler.ts"
export { explainPlan, type Explanation } from "./explain.ts"
export { lineReporter, barReporter, silentReporter, type Reporter } from "./progress.ts"
