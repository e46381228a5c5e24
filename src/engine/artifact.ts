// Artifact types: what a stage produces and consumes, and how each kind is stored.
//   json     small Schema-typed values, stored as canonical JSON text in SQLite
//   file     an opaque file payload, stored content-addressed under cache/objects/
//   tensors  named numeric tensors, stored as a safetensors file under cache/objects/
//   directory  external directories only (model checkpoints), entering by content hash
// The `name` is part of the type, so wiring a "Metrics" output into a "Corpus" input does not compile.
import { Effect, Result, Schema, type SchemaIssue } from "effect"
import type { SafetensorsHeader, Tensor } from "../core/safetensors.ts"
import { ArtifactError } from "./errors.ts"

/** A stored file payload as a consumer sees it (read-only; do not modify the file). */
export interface FileRef {
  readonly path: string
  readonly hash: string
  readonly size: number
}

/** A stage producing a file payload returns the path of a file it wrote (best inside `ctx.workDir`) or its bytes. */
export type FileOutput = { readonly path: string } | Uint8Array

/**
 * Tensors as a consumer sees them: the verified safetensors payload, its parsed header (names, dtypes,
 * shapes, offsets) and a reader, so multi-GB weights are never loaded whole unless asked for. The file
 * can also be handed to onnxruntime as external data by its path.
 */
export interface TensorsValue extends FileRef {
  readonly header: SafetensorsHeader
  readonly metadata: Readonly<Record<string, string>>
  /** Reads one tensor from the file (fails with a message naming the file and tensor if absent). */
  readonly read: (name: string) => Tensor
}

/**
 * What a stage producing tensors returns: the tensors (small and medium payloads), or the path of a
 * safetensors file it wrote itself, e.g. with `writeFileStreamed` into `ctx.workDir` (large weights).
 */
export type TensorsOutput =
  | { readonly tensors: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>; readonly metadata?: Readonly<Record<string, string>> }
  | { readonly path: string }

export interface JsonArtifact<N extends string, T> {
  readonly _tag: "json"
  readonly name: N
  readonly schema: Schema.Codec<T, any>
}
export interface FileArtifact<N extends string> {
  readonly _tag: "file"
  readonly name: N
}
export interface TensorsArtifact<N extends string> {
  readonly _tag: "tensors"
  readonly name: N
}
export interface DirectoryArtifact<N extends string> {
  readonly _tag: "directory"
  readonly name: N
}

export type ArtifactType =
  | JsonArtifact<string, any>
  | FileArtifact<string>
  | TensorsArtifact<string>
  | DirectoryArtifact<string>

/** The value a consuming stage receives for an input of type `A`. */
export type ValueOf<A extends ArtifactType> =
  A extends JsonArtifact<any, infer T> ? T
  : A extends TensorsArtifact<any> ? TensorsValue
  : A extends FileArtifact<any> | DirectoryArtifact<any> ? FileRef
  : never

/** What a producing stage's `run` returns for an output of type `A`. */
export type OutputOf<A extends ArtifactType> =
  A extends JsonArtifact<any, infer T> ? T
  : A extends TensorsArtifact<any> ? TensorsOutput
  : A extends FileArtifact<any> ? FileOutput
  : never

export const Artifact = {
  /** A small Schema-typed value (metrics, configs, short texts), stored as JSON in SQLite. */
  json: <const N extends string, T>(name: N, schema: Schema.Codec<T, any>): JsonArtifact<N, T> => ({ _tag: "json", name, schema }),
  /** An opaque file payload (token ids, generations, a LoRA checkpoint), content-addressed on disk. */
  file: <const N extends string>(name: N): FileArtifact<N> => ({ _tag: "file", name }),
  /** Named tensors stored in safetensors layout, readable by other tools. */
  tensors: <const N extends string>(name: N): TensorsArtifact<N> => ({ _tag: "tensors", name }),
  /** A directory from outside the cache (an HF model folder); only usable through `external.dir`. */
  directory: <const N extends string>(name: N): DirectoryArtifact<N> => ({ _tag: "directory", name }),
}

/** The generic file type of `external.file(path)`. */
export const File = Artifact.file("File")
/** The generic directory type of `external.dir(path)`. */
export const Directory = Artifact.directory("Directory")

// The path of the first problem Schema reports, as `field[0].name`; "" when the value itself is wrong.
const issuePath = (issue: SchemaIssue.Issue): string => {
  const path: Array<PropertyKey> = []
  for (let i: SchemaIssue.Issue | undefined = issue; i !== undefined; ) {
    if (i._tag === "Pointer") {
      path.push(...i.path)
      i = i.issue
    } else i = i._tag === "Composite" ? i.issues[0] : undefined
  }
  return path.map((k, n) => (typeof k === "number" ? `[${k}]` : n === 0 ? String(k) : `.${String(k)}`)).join("")
}

/**
 * Decodes what a file holds (a tensors payload's metadata, a checkpoint's metadata, a JSON file's
 * text through `Schema.fromJsonString`) with `schema`. A damaged or foreign file fails here with an
 * ArtifactError naming the file, `what` it should be and the field that is wrong, rather than with a
 * TypeError wherever the value is used later.
 */
export const decodeArtifact = <T>(schema: Schema.Codec<T, any>, path: string, what: string, value: unknown): Effect.Effect<T, ArtifactError> => {
  const r = Schema.decodeUnknownResult(schema)(value)
  if (Result.isSuccess(r)) return Effect.succeed(r.success)
  const field = issuePath(r.failure.issue)
  const problem = r.failure.message.split("\n")[0]
  return Effect.fail(new ArtifactError({ path, field, message: `${path}: not ${what}: ${field === "" ? "" : `field ${field}: `}${problem}` }))
}
