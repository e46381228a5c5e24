// How a model graph reads a checkpoint's safetensors files as ONNX external data, wherever the
// checkpoint lives (another filesystem, a read-only or root-owned directory, the HF hub cache)
// and without linking or copying a byte of it.
//
// onnxruntime 1.30 validates every external-data location (tensorprotoutils.cc,
// ValidateExternalDataPathFromDir): no absolute locations, and the location's real path (symlinks
// followed) must lie under one allowed directory. For a model loaded from a path that directory is
// the .onnx file's; a symlink under it pointing elsewhere is rejected ("External data path escapes
// model directory"), and hard links fail across filesystems (EXDEV) and, with
// fs.protected_hardlinks, on files the user does not own (EPERM). For a model loaded from bytes,
// the allowed directory is the session config entry
// `session.model_external_initializers_file_folder_path` (the working directory without it). So:
//
//   placeWeights(ckpt | ckpts, graphDir) -> WeightPlacement
//     weightsRoot: the deepest directory holding the real paths of all the checkpoints' weight
//     files (the checkpoint directory; for the hub cache, whose snapshot files are symlinks, its
//     blobs/ directory; for several checkpoints in one graph, their common ancestor). Nothing is
//     written next to the weights.
//   externalWeights(g, placement, prefix?) -> WeightSource
//     Each weight becomes an initializer whose location is relative to weightsRoot, named
//     prefix + tensor name (a prefix per model keeps two checkpoints' equal names apart); fp16/bf16
//     weights get an in-graph Cast to float32; FP8 weights are read as bytes, decoded through a
//     256-entry table (Gather) and multiplied by their scale tensor, expanded over its blocks.
//   writeGraph(g, placement, name) -> GraphFile
//     The .onnx goes into graphDir (ours, for inspection and error messages); createSession loads
//     its bytes with weightsRoot as the external-data folder, and onnxruntime maps the weight
//     files from there as it would next to the .onnx.
// (onnxruntime-node 1.30 also takes `externalData: [{ path, data }]` with the file's bytes in
// memory, but that reads every shard into the JS heap, and a Node 20 Buffer stops at 4 GiB.)
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type DType, externalSource, type Graph, serialize, type Value } from "../graph/index.ts"
import type { GraphFile } from "../runtime/session.ts"
import type { Checkpoint, WeightRef } from "./checkpoint.ts"
import { float8E4M3Values, float8E5M2Values, type SafetensorsDType } from "../core/safetensors.ts"

export class WeightPlacementError extends Data.TaggedError("WeightPlacementError")<{
  readonly file: string
  readonly message: string
}> {}

export interface WeightPlacement {
  /** The directory the .onnx file is written into. */
  readonly graphDir: string
  /** The directory external-data locations are relative to (real path; contains every weight file). */
  readonly weightsRoot: string
}

/** The deepest directory containing all of `files` (absolute real paths). */
const commonDir = (files: readonly string[]): string =>
  files.map(path.dirname).reduce((a, b) => {
    for (let rel = path.relative(a, b); rel === ".." || rel.startsWith(`..${path.sep}`); rel = path.relative(a, b)) a = path.dirname(a)
    return a
  })

/** Where the graph of `ckpt` (or of several checkpoints) goes (`graphDir`, created if missing) and where its weights are read from; see the header. */
export const placeWeights = (ckpts: Checkpoint | ReadonlyArray<Checkpoint>, graphDir: string): Effect.Effect<WeightPlacement, WeightPlacementError> =>
  Effect.gen(function* () {
    const all: ReadonlyArray<Checkpoint> = Array.isArray(ckpts) ? ckpts : [ckpts as Checkpoint]
    const real = yield* Effect.forEach(all.flatMap((c) => c.tensorFiles), (file) =>
      Effect.try({
        try: () => fs.realpathSync(file),
        catch: (e) => new WeightPlacementError({ file, message: `cannot resolve the weights file ${file}: ${e instanceof Error ? e.message : String(e)}` }),
      }),
    )
    const empty = all.find((c) => c.tensorFiles.length === 0)
    if (empty) return yield* Effect.fail(new WeightPlacementError({ file: empty.dir, message: `${empty.dir}: the checkpoint has no weight files` }))
    const dir = yield* Effect.try({
      try: () => {
        fs.mkdirSync(graphDir, { recursive: true })
        return fs.realpathSync(graphDir)
      },
      catch: (e) => new WeightPlacementError({ file: graphDir, message: `cannot create the graph directory ${graphDir}: ${e instanceof Error ? e.message : String(e)}` }),
    })
    return { graphDir: dir, weightsRoot: commonDir(real) }
  })

const graphDType: Partial<Record<SafetensorsDType, DType>> = { F32: "float32", F16: "float16", BF16: "bfloat16", F8_E4M3: "uint8", F8_E5M2: "uint8" }
const float8Values: Partial<Record<SafetensorsDType, Float32Array>> = { F8_E4M3: float8E4M3Values, F8_E5M2: float8E5M2Values }

/** Frozen weights as external-data initializers (float32 values; half precision cast in-graph, FP8 dequantized). */
export const externalWeights = (g: Graph, placement: WeightPlacement, prefix = "") => {
  const made = new Map<string, Value>()
  // block index of every row / column, shared by the weights of equal sizes
  const blockIndices = new Map<string, Value>()
  const blockIndex = (n: number, size: number) => {
    const key = `${n}/${size}`
    const v = blockIndices.get(key) ?? g.constant("int64", [n], Array.from({ length: n }, (_, i) => Math.floor(i / size)))
    blockIndices.set(key, v)
    return v
  }
  const stored = (ref: WeightRef): Value => {
    const dtype = graphDType[ref.dtype]
    if (!dtype) throw new Error(`${ref.file}: ${ref.name}: weights of dtype ${ref.dtype} are not supported (F32, F16, BF16, F8_E4M3, F8_E5M2)`)
    const src = externalSource(placement.weightsRoot, ref.file, ref.fileOffset, ref.byteLength)
    const init = g.initializer(prefix + ref.name, dtype, [...ref.shape], src)
    const table = float8Values[ref.dtype]
    if (table === undefined) return dtype === "float32" ? init : g.cast(init, "float32")
    if (ref.scale === undefined) throw new Error(`${ref.file}: ${ref.name}: an FP8 weight without its scale`)
    const values = g.gather(g.constant("float32", [256], table), g.cast(init, "int32"))
    // Expand the scale grid over its blocks on each axis that has more than one block.
    const [rows, cols] = ref.shape
    const { block } = ref.scale
    let scale = stored(ref.scale.ref)
    if (block[0] < rows) scale = g.gather(scale, blockIndex(rows, block[0]), 0)
    if (block[1] < cols) scale = g.gather(scale, blockIndex(cols, block[1]), 1)
    return g.mul(values, scale)
  }
  return (ref: WeightRef): Value => {
    const done = made.get(ref.name)
    if (done) return done
    const v = stored(ref)
    made.set(ref.name, v)
    return v
  }
}

/** Serializes `g` to `<graphDir>/<name>.onnx` (atomically); createSession loads it with the placement's weights root. */
export const writeGraph = (g: Graph, placement: WeightPlacement, name: string): Effect.Effect<GraphFile, WeightPlacementError> =>
  Effect.try({
    try: () => {
      const file = path.join(placement.graphDir, `${name}.onnx`)
      const tmp = `${file}.${process.pid}.tmp`
      fs.writeFileSync(tmp, serialize(g))
      fs.renameSync(tmp, file)
      return { path: file, externalDataDir: placement.weightsRoot }
    },
    catch: (e) => new WeightPlacementError({ file: placement.graphDir, message: `cannot write the graph ${name}.onnx: ${e instanceof Error ? e.message : String(e)}` }),
  })
