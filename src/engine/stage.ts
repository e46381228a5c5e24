// Stages, nodes, sweeps and pipelines: the declarative surface that pipeline files use.
import type { Effect } from "effect"
import type { ArtifactType, DirectoryArtifact, FileArtifact, JsonArtifact, OutputOf, TensorsArtifact, ValueOf } from "./artifact.ts"
import { Directory, File } from "./artifact.ts"
import type { Gather, GatheredArtifact, Point } from "./gather.ts"
import { fileURLToPath } from "node:url"

/** Where a node runs. `cuda.deviceId` is the id to pass to onnxruntime (the child only sees its own GPU). */
export type Device = { readonly kind: "cpu" } | { readonly kind: "cuda"; readonly deviceId: number; readonly gpu: number }

/** What a running stage gets besides its params and inputs. */
export interface StageContext {
  /** Display name of the node, e.g. `train[lr=0.001]`. */
  readonly node: string
  /** The cache key this execution computes. */
  readonly key: string
  readonly device: Device
  /** `params.seed` when the stage has one, else a fixed 32-bit seed derived from stage and params. */
  readonly seed: number
  /**
   * Scratch and checkpoint directory keyed by the cache key: it survives a killed run so a long stage
   * can resume from its last checkpoint, and is removed once the output is published.
   */
  readonly workDir: string
  /** Appends a line to the node's log file (runs/<id>/logs/<node>.log). `Effect.log` goes there too. */
  readonly log: (message: string) => void
  /** Records a metric (SQLite `metrics` table and runs/<id>/metrics.jsonl). */
  readonly metric: (name: string, value: number, step?: number) => void
  /** Progress of this node: `progress.total(n, "steps")` once, then `progress.advance()` or `progress.set(i)`. */
  readonly progress: {
    readonly total: (total: number, unit: string) => void
    readonly advance: (by?: number) => void
    readonly set: (value: number) => void
  }
}

export interface Resources {
  /** CPU job slots taken (of `--jobs`); default 1. */
  readonly cpu?: number
  /**
   * 1: the stage uses a GPU. It gets a GPU slot (one device) when `--gpus` names (or detection finds)
   * any, else it runs on the CPU; either way in a child process unless `isolate` says otherwise.
   */
  readonly gpu?: 0 | 1
  /** Memory hint in MiB, counted against `--memory` so large stages do not start together. */
  readonly memoryMB?: number
  /**
   * `"process"`: run in a child process (one per node, with its GPU) so a stage that blocks the event
   * loop (any onnxruntime `run`) cannot stall the scheduler, and a crash or OOM fails this node only.
   * `"main"`: run on the scheduler's thread (pure-TS stages that yield). Default: "process" when `gpu > 0`, else "main".
   */
  readonly isolate?: "main" | "process"
}

/** An input is an artifact type, or `gathered(type)` for every instance of a swept node (see gather.ts). */
export type InputTypes = Readonly<Record<string, ArtifactType | GatheredArtifact<ArtifactType>>>

/** The value `run` receives for an input: a gathered one is every instance's value with its sweep coordinates. */
export type InputValue<A> =
  A extends GatheredArtifact<infer E> ? ReadonlyArray<Point<ValueOf<E>>>
  : A extends ArtifactType ? ValueOf<A>
  : never
type ParamsOf<P> = P extends { readonly Type: infer T } ? T : never
type EncodedOf<P> = P extends { readonly Encoded: infer E } ? E : never

export interface StageSpec<P extends ParamsSchema, I extends InputTypes, O extends ArtifactType, E> {
  readonly name: string
  /** Bump when the stage's results change for the same params and inputs: it is part of the cache key. */
  readonly version: number
  readonly params: P
  /** Param fields that do not change results (batch size, log level): left out of the cache key. */
  readonly unkeyed?: ReadonlyArray<keyof ParamsOf<P> & string>
  readonly inputs: I
  readonly output: O
  readonly resources?: Resources
  /**
   * Errors worth retrying (network, a busy device): the run is retried up to `retries` times (default 2).
   * Takes `unknown` so it does not pin the error type inferred from `run`: test with `instanceof` or `_tag`.
   */
  readonly transient?: (error: unknown) => boolean
  readonly retries?: number
  readonly run: (args: {
    readonly params: ParamsOf<P>
    readonly inputs: { readonly [K in keyof I]: InputValue<I[K]> }
    readonly ctx: StageContext
  }) => Effect.Effect<OutputOf<O>, E>
}

/** Any Schema codec of an object without decoding services (`Schema.Struct({...})`). */
export type ParamsSchema = { readonly Type: object; readonly Encoded: object; readonly DecodingServices: never; readonly EncodingServices: never }

export interface AnyStage {
  readonly spec: StageSpec<any, any, any, any>
  /** The file that declared the stage, hashed so `pipe status` reports source changes. */
  readonly sourceFile: string | undefined
}

// ---- sweeps --------------------------------------------------------------------------------------

/** A param value that expands into one node instance per value. Values sharing an axis (`zip`) vary together. */
export class Sweep<out T> {
  readonly _tag = "Sweep"
  constructor(
    /** Identity of the sweep axis; `zip` columns share one. */
    readonly axis: symbol,
    readonly values: ReadonlyArray<T>,
  ) {}
}

/** By tag, not `instanceof`: a pipeline may reach the engine through another copy of this module. */
export const isSweep = (u: unknown): u is Sweep<unknown> => typeof u === "object" && u !== null && (u as Sweep<unknown>)._tag === "Sweep"

/** `lr: sweep([1e-3, 1e-4])`: one instance per value; several sweeps in a pipeline form their cartesian product. */
export const sweep = <const T>(values: ReadonlyArray<T>): Sweep<T> => {
  if (values.length === 0) throw new Error("sweep([]) needs at least one value")
  return new Sweep(Symbol("sweep"), values)
}

/** `...zip({ lr: [1e-3, 1e-4], steps: [100, 200] })`: the columns vary together (2 instances, not 4). */
export const zip = <const R extends Readonly<Record<string, ReadonlyArray<unknown>>>>(
  columns: R,
): { [K in keyof R]: Sweep<R[K][number]> } => {
  const lengths = new Set(Object.values(columns).map((c) => c.length))
  if (lengths.size !== 1 || lengths.has(0)) throw new Error(`zip: columns must be non-empty and of equal length (got ${[...lengths].join(", ")})`)
  const axis = Symbol("zip")
  return Object.fromEntries(Object.entries(columns).map(([k, v]) => [k, new Sweep(axis, v)])) as never
}

export type Sweepable<E> = { readonly [K in keyof E]: E[K] | Sweep<E[K]> }

// ---- nodes ---------------------------------------------------------------------------------------

/** One call of a stage in a pipeline (before sweep expansion). */
export interface Template {
  readonly label: string
  readonly stage: AnyStage
  readonly params: Readonly<Record<string, unknown>>
  readonly inputs: Readonly<Record<string, Source<ArtifactType> | Gather<ArtifactType>>>
}

/** The output of a stage call, to pass as another stage's input. */
export interface Node<O extends ArtifactType> {
  readonly _tag: "Node"
  readonly output: O
  readonly template: Template
}

/** A file or directory from outside the cache, entering by content hash. */
export interface External<O extends ArtifactType> {
  readonly _tag: "External"
  readonly output: O
  readonly path: string
  /** Set by `{ name }`: `--set <name>.path=...` replaces `path` at plan time. */
  readonly name?: string
}

export type Source<O extends ArtifactType> = Node<O> | External<O>

export interface ExternalOptions<O extends ArtifactType> {
  /**
   * Makes the path settable from the command line: with `{ name: "model" }`, `--set model.path=DIR`
   * plans the pipeline with DIR instead (relative to the current directory). Not a stage call's name.
   */
  readonly name?: string
  /** A specific artifact type instead of the generic File / Directory, so only inputs of that type accept it. */
  readonly type?: O
}

const makeExternal = <O extends ArtifactType>(path: string, generic: ArtifactType, options: O | ExternalOptions<O> | undefined): External<O> => {
  const { name, type }: ExternalOptions<O> = options === undefined ? {} : "_tag" in options ? { type: options } : options
  // `--set` splits "name.field=value" at the first dot and the first "=".
  if (name !== undefined && !/^[^.=\s]+$/.test(name))
    throw new Error(`external ${path}: name ${JSON.stringify(name)} must be non-empty, without ".", "=" or spaces (it is used as --set ${name}.path=...)`)
  return { _tag: "External", output: (type ?? generic) as O, path, ...(name === undefined ? {} : { name }) }
}

/** The overloads of `external.file` / `external.dir`: without a `type` the generic File / Directory. */
interface ExternalMaker<Generic extends ArtifactType, Base extends ArtifactType> {
  <O extends Base>(path: string, options: O | (ExternalOptions<O> & { readonly type: O })): External<O>
  (path: string, options?: { readonly name?: string }): External<Generic>
}

/** `external.file(path)`, `external.dir(path, { name: "model" })`, `external.file(path, Questions)` or `{ name, type }`. */
export const external: {
  /** A file (dataset, prompt file) hashed by content; remembered by (path, size, mtime, inode). */
  readonly file: ExternalMaker<typeof File, FileArtifact<string>>
  /** A directory (HF model folder) hashed over its files' relative paths and contents. */
  readonly dir: ExternalMaker<typeof Directory, DirectoryArtifact<string>>
} = {
  // the overloads above are the typed surface; one untyped implementation serves both
  file: ((path: string, options?: ArtifactType | ExternalOptions<ArtifactType>) => makeExternal(path, File, options)) as never,
  dir: ((path: string, options?: ArtifactType | ExternalOptions<ArtifactType>) => makeExternal(path, Directory, options)) as never,
}

/**
 * An input of the generic `File` type takes any file payload (tensors included), one of the generic
 * `AnyJson` type any JSON value; other types need an exact match.
 */
export type Accepts<I extends ArtifactType> =
  I extends FileArtifact<"File"> ? FileArtifact<string> | TensorsArtifact<string>
  : I extends JsonArtifact<"Json", any> ? JsonArtifact<string, any>
  : I
/** A `gathered(T)` input takes `gather(node)` of a node whose output `T` accepts; any other input a node or external. */
type SourceFor<I> =
  I extends GatheredArtifact<infer E> ? Gather<Accepts<E>>
  : I extends ArtifactType ? Source<Accepts<I>>
  : never
type Sources<I extends InputTypes> = { readonly [K in keyof I]: SourceFor<I[K]> }
export interface CallOptions {
  /** Name of this call (default: the stage name): used by `--set name.param=v`, `--rerun name` and in displays. */
  readonly name?: string
}

export interface Stage<P extends ParamsSchema, I extends InputTypes, O extends ArtifactType, E> extends AnyStage {
  readonly spec: StageSpec<P, I, O, E>
  (
    params: Sweepable<EncodedOf<P>>,
    ...rest: keyof I extends never ? [inputs?: Sources<I>, options?: CallOptions] : [inputs: Sources<I>, options?: CallOptions]
  ): Node<O>
}

const callerFile = (): string | undefined => {
  // Line 0 is "Error", 1 is callerFile, 2 is stage(), 3 is the module declaring the stage.
  const line = new Error().stack?.split("\n")[3] ?? ""
  const m = /(file:\/\/[^\s)]+?|\/[^\s)]+?):\d+:\d+\)?$/.exec(line.trim())
  if (!m) return undefined
  return m[1].startsWith("file://") ? fileURLToPath(m[1]) : m[1]
}

/**
 * Declares a stage. Calling the result wires one node: `train({ lr: 1e-3 }, { corpus })`.
 *
 * ```ts
 * export const count = stage({
 *   name: "count", version: 1,
 *   params: Schema.Struct({ word: Schema.String }),
 *   inputs: { text: File },
 *   output: Artifact.json("Count", Schema.Number),
 *   run: ({ params, inputs }) => Effect.sync(() => readFileSync(inputs.text.path, "utf8").split(params.word).length - 1),
 * })
 * ```
 */
export const stage = <P extends ParamsSchema, const I extends InputTypes, O extends ArtifactType, E = never>(
  spec: StageSpec<P, I, O, E>,
): Stage<P, I, O, E> => {
  const sourceFile = callerFile()
  const self = ((params: Record<string, unknown>, inputs?: Template["inputs"], options?: CallOptions): Node<O> => ({
    _tag: "Node",
    output: spec.output,
    template: { label: options?.name ?? spec.name, stage: self, params, inputs: inputs ?? {} },
  })) as unknown as Stage<P, I, O, E>
  Object.assign(self, { spec, sourceFile })
  return self
}

// ---- pipelines -----------------------------------------------------------------------------------

/**
 * A file a pipeline writes into its run folder after every run (a cached one too): the node's
 * artifact as is (JSON pretty-printed, file and tensor payloads copied), or, for a JSON node, what
 * `as` makes of its value: a string is written as text, a Uint8Array as bytes, anything else as JSON;
 * or, for a file or tensors node, whatever `write` makes at the target path (e.g. a directory).
 */
export type PublishEntry<T> =
  | Node<ArtifactType>
  | { readonly from: Node<JsonArtifact<string, T>>; readonly as: (value: T) => unknown }
  | { readonly from: Node<FileArtifact<string> | TensorsArtifact<string>>; readonly write: PublishWriter }

/**
 * Writes a published entry at `target` (a file, or a directory it creates) from the node's stored
 * payload file and the paths of the node's external inputs by input name (e.g. the model an adapter
 * was trained on). Throws to report a failure, which fails the run like any publish error.
 */
export type PublishWriter = (source: { readonly payload: string; readonly externals: Readonly<Record<string, string>> }, target: string) => void

export interface PipelineOptions<P> {
  /** File name in runs/<id>/ -> what to write there; a swept node writes one file per instance (`compare[rank=8].md`). */
  readonly publish?: { readonly [F in keyof P]: PublishEntry<P[F]> }
  /** Published files whose text `pipe run` prints after its summary. */
  readonly print?: ReadonlyArray<NoInfer<keyof P & string>>
}

export interface PublishSpec {
  readonly file: string
  readonly node: Node<ArtifactType>
  readonly as?: (value: any) => unknown
  readonly write?: PublishWriter
}

export interface Pipeline {
  readonly _tag: "Pipeline"
  readonly name: string
  /** The nodes the pipeline is for; everything upstream of them is planned too. */
  readonly targets: ReadonlyArray<Node<ArtifactType>>
  /** Files written into the run folder after each run; their nodes are planned as targets too. */
  readonly publish: ReadonlyArray<PublishSpec>
  /** File names of `publish` that `pipe run` prints. */
  readonly print: ReadonlyArray<string>
}

/** Files the engine itself writes into a run folder. */
const RESERVED = new Set(["plan.json", "summary.json", "metrics.jsonl", "progress.json", "logs", "curves"])

/**
 * `export default pipeline("blue", { report, samples })`: a pipeline file's default export. Options
 * publish results into the run folder:
 *
 * ```ts
 * pipeline("blue", { comparison }, {
 *   publish: { "compare.json": comparison, "compare.md": { from: comparison, as: (c) => c.markdown } },
 *   print: ["compare.md"],
 * })
 * ```
 */
export const pipeline = <P = {}>(
  name: string,
  targets: Readonly<Record<string, Node<ArtifactType>>> | ReadonlyArray<Node<ArtifactType>>,
  options: PipelineOptions<P> = {},
): Pipeline => {
  const entries = Object.entries((options.publish ?? {}) as Readonly<Record<string, PublishEntry<unknown>>>)
  const publish = entries.map(([file, entry]): PublishSpec => {
    if (!/^[^/\\\0]+$/.test(file) || file === "." || file === ".." || RESERVED.has(file))
      throw new Error(`pipeline "${name}": publish "${file}": expected a file name in the run folder (no directories; not ${[...RESERVED].join(", ")})`)
    if (!("from" in entry)) return { file, node: entry }
    if ("write" in entry) {
      const kind = (entry.from.output as ArtifactType)._tag
      if (kind !== "file" && kind !== "tensors")
        throw new Error(`pipeline "${name}": publish "${file}": "write" reads a stored payload file; ${entry.from.template.label} outputs ${kind} (use "as" for JSON values)`)
      return { file, node: entry.from, write: entry.write }
    }
    if (entry.from.output._tag !== "json")
      throw new Error(`pipeline "${name}": publish "${file}": "as" renders JSON values; ${entry.from.template.label} outputs ${entry.from.output._tag} (publish the node itself to copy it)`)
    return { file, node: entry.from, as: entry.as }
  })
  const print = options.print ?? []
  for (const file of print)
    if (!publish.some((p) => p.file === file))
      throw new Error(`pipeline "${name}": print "${file}": not a published file (published: ${publish.map((p) => p.file).join(", ") || "none"})`)
  return { _tag: "Pipeline", name, targets: Array.isArray(targets) ? targets : Object.values(targets), publish, print }
}

export const isPipeline = (u: unknown): u is Pipeline =>
  typeof u === "object" && u !== null && (u as Pipeline)._tag === "Pipeline" && Array.isArray((u as Pipeline).targets)
