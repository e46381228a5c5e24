// Errors the engine reports to the user. Each carries a complete, human-readable `message`.
import * as Data from "effect/Data"

/** The pipeline file could not be loaded or does not default-export a pipeline. */
export class PipelineError extends Data.TaggedError("PipelineError")<{ readonly file: string; readonly message: string }> {}

/** A stage's params do not decode against its Schema (or a `--set` names an unknown node or field). */
export class ParamsError extends Data.TaggedError("ParamsError")<{
  readonly pipeline: string
  readonly node: string
  readonly message: string
}> {}

/** An external input (dataset, model dir) is missing or unreadable. */
export class ExternalInputError extends Data.TaggedError("ExternalInputError")<{ readonly path: string; readonly message: string }> {}

/** A stored payload no longer matches its hash (or is gone): its producers must be recomputed. */
export class CorruptArtifact extends Data.TaggedError("CorruptArtifact")<{ readonly hash: string; readonly message: string }> {}

/** A stage failed (its error, a defect, or a crashed child process). */
export class NodeFailed extends Data.TaggedError("NodeFailed")<{ readonly node: string; readonly message: string }> {}

export const errorMessage = (e: unknown): string => {
  if (e instanceof Error) return e.message
  if (typeof e === "object" && e !== null) {
    const o = e as { message?: unknown; _tag?: unknown }
    if (typeof o.message === "string" && o.message) return typeof o._tag === "string" ? `${o._tag}: ${o.message}` : o.message
    if (typeof o._tag === "string") return `${o._tag} ${JSON.stringify(e)}`
  }
  return String(e)
}
