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

/**
 * A stage failed (its error, a defect, or a crashed child process). `cause` is what the stage failed
 * with: its typed error itself when it ran in this process, its `describeError` when it ran in a child.
 */
export class NodeFailed extends Data.TaggedError("NodeFailed")<{ readonly node: string; readonly message: string; readonly cause?: unknown }> {}

/**
 * A file's contents do not decode as what it should be (a damaged or foreign artifact, a checkpoint
 * of another run): `path` is the file, `field` the metadata key or JSON path that is wrong.
 */
export class ArtifactError extends Data.TaggedError("ArtifactError")<{ readonly path: string; readonly field: string; readonly message: string }> {}

/** A stage refuses its params or inputs as a whole (they contradict each other); the message says which and why. */
export class StageError extends Data.TaggedError("StageError")<{ readonly message: string }> {}

/**
 * An error as plain data, to cross a process boundary and be recorded in summary.json: its tag, its
 * message and its scalar fields (file, field, step, node...; no stack, no cause chain, no arrays).
 */
export interface ErrorDescription {
  readonly _tag: string
  readonly message: string
  readonly [field: string]: string | number | boolean | null
}

const isScalar = (v: unknown): v is string | number | boolean | null => v === null || ["string", "number", "boolean"].includes(typeof v)

/** `e` as plain data: a tagged error keeps its tag and scalar fields, anything else becomes {_tag: "Error"}. */
export const describeError = (e: unknown): ErrorDescription => {
  const tag = typeof (e as { _tag?: unknown } | null)?._tag === "string" ? (e as { _tag: string })._tag : "Error"
  const fields = typeof e === "object" && e !== null ? Object.entries(e).filter(([k, v]) => k !== "_tag" && k !== "message" && isScalar(v)) : []
  const message = (e as { message?: unknown } | null)?.message
  return { ...Object.fromEntries(fields), _tag: tag, message: typeof message === "string" ? message : errorMessage(e) }
}

/**
 * A write to the cache or to runs/ failed (disk full, read-only filesystem, permissions). `path` is
 * the file that could not be written; the message names it and says what to do.
 */
export class StorageError extends Data.TaggedError("StorageError")<{ readonly path: string; readonly message: string }> {}

/** The cache directory cannot be used as it is (a damaged database, gc refusing to delete payloads). */
export class CacheError extends Data.TaggedError("CacheError")<{ readonly path: string; readonly message: string }> {}

// Node's errno codes, and better-sqlite3's SQLite result codes (extended ones, e.g. SQLITE_READONLY_DBMOVED).
const FULL = ["ENOSPC", "EDQUOT", "SQLITE_FULL"]
const READ_ONLY = ["EROFS", "EACCES", "EPERM", "SQLITE_READONLY", "SQLITE_CANTOPEN"]
const codeIn = (code: string, codes: ReadonlyArray<string>) => codes.some((c) => code === c || code.startsWith(`${c}_`))

/** The errno or SQLite result code of an error, or "". */
const errorCode = (e: unknown): string => {
  const code = (e as { code?: unknown } | null)?.code
  return typeof code === "string" ? code : ""
}

/** SQLite found the database file damaged (not a database, or a corrupt page). */
export const isDamagedDatabase = (e: unknown): boolean => codeIn(errorCode(e), ["SQLITE_NOTADB", "SQLITE_CORRUPT"])

/** `what` (e.g. "writing") `path` failed with `e`: a StorageError whose message names the path and the remedy. */
export const storageError = (what: string, path: string, e: unknown): StorageError => {
  if (e instanceof StorageError) return e
  const code = errorCode(e)
  const hint =
    codeIn(code, FULL) ? " (the disk is full: free some space and run again; cached results are kept)"
    : codeIn(code, READ_ONLY) ? " (not writable by this user, or on a read-only filesystem)"
    : isDamagedDatabase(e) ? " (the database is damaged: run pipe doctor --cache)"
    : ""
  return new StorageError({ path, message: `${what} ${path} failed: ${errorMessage(e)}${hint}` })
}

export const errorMessage = (e: unknown): string => {
  if (e instanceof Error) return e.message
  if (typeof e === "object" && e !== null) {
    const o = e as { message?: unknown; _tag?: unknown }
    if (typeof o.message === "string" && o.message) return typeof o._tag === "string" ? `${o._tag}: ${o.message}` : o.message
    if (typeof o._tag === "string") return `${o._tag} ${JSON.stringify(e)}`
  }
  return String(e)
}
