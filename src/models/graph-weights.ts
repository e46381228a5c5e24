// Where a model graph's .onnx goes so that onnxruntime can read the checkpoint's safetensors
// files as external data. onnxruntime 1.30 only reads external data whose real path lies under
// the .onnx file's directory (no absolute paths, no "..", symlinks resolved), so:
//
//   placeWeights(ckpt, graphDir) -> WeightPlacement
//     For each safetensors file of the checkpoint: if its real path is already under graphDir it
//     is used as is; otherwise it is hard-linked into graphDir/weights/ (same filesystem, no copy,
//     works for a read-only checkpoint and for the HF hub cache's blobs). When a hard link is
//     impossible (another filesystem, or no permission) the file is copied only if
//     `allowCopy` is set; otherwise the error says which file and why.
//   externalWeights(g, placement) -> WeightSource
//     Each weight becomes an initializer pointing into its (linked) file; fp16/bf16 weights get an
//     in-graph Cast to float32; FP8 weights are read as bytes, decoded through a 256-entry table
//     (Gather) and multiplied by their scale tensor, expanded over its blocks. Write the
//     serialized graph into placement.graphDir.
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { type DType, externalSource, type Graph, serialize, type Value } from "../graph/index.ts"
import type { Checkpoint, WeightRef } from "./checkpoint.ts"
import { float8E4M3Values, float8E5M2Values, type SafetensorsDType } from "./safetensors.ts"

export class WeightPlacementError extends Data.TaggedError("WeightPlacementError")<{
  readonly file: string
  readonly message: string
}> {}

export interface WeightPlacement {
  /** The directory the .onnx file must be written into. */
  readonly graphDir: string
  /** A weight file's path as the checkpoint names it -> a path whose real path is under graphDir. */
  readonly fileFor: (file: string) => string
}

const isUnder = (dir: string, file: string) => {
  const rel = path.relative(dir, file)
  return rel !== "" && !rel.startsWith(`..${path.sep}`) && rel !== ".." && !path.isAbsolute(rel)
}

/** Makes every weight file of `ckpt` reachable from `graphDir` (created if missing); see the header. */
export const placeWeights = (ckpt: Checkpoint, graphDir: string, options: { readonly allowCopy?: boolean } = {}): Effect.Effect<WeightPlacement, WeightPlacementError> =>
  Effect.try({
    try: () => {
      fs.mkdirSync(graphDir, { recursive: true })
      const dir = fs.realpathSync(graphDir)
      const map = new Map<string, string>()
      ckpt.tensorFiles.forEach((file, i) => {
        const real = fs.realpathSync(file)
        if (isUnder(dir, real)) {
          map.set(file, real)
          return
        }
        const target = path.join(dir, "weights", `${i}-${path.basename(real)}`)
        fs.mkdirSync(path.dirname(target), { recursive: true })
        const st = fs.statSync(real)
        const existing = fs.existsSync(target) ? fs.statSync(target) : undefined
        // an earlier placement of the same file: same inode (link) or same size and mtime (copy)
        if (existing && (existing.ino === st.ino || (existing.size === st.size && existing.mtimeMs === st.mtimeMs))) {
          map.set(file, target)
          return
        }
        if (existing) fs.rmSync(target)
        try {
          fs.linkSync(real, target)
        } catch (e) {
          if (!options.allowCopy)
            throw new WeightPlacementError({
              file,
              message: `cannot hard-link the weights file ${real} into ${dir} (${e instanceof Error ? e.message : String(e)}): onnxruntime reads external data only under the graph's directory; put the graph directory on the same filesystem as the model, or allow a copy`,
            })
          fs.copyFileSync(real, target)
          fs.utimesSync(target, st.atime, st.mtime)
        }
        map.set(file, target)
      })
      return {
        graphDir: dir,
        fileFor: (file: string) => {
          const f = map.get(file)
          if (f === undefined) throw new Error(`graph weights: ${file} is not a weight file of ${ckpt.dir}`)
          return f
        },
      }
    },
    catch: (e) => (e instanceof WeightPlacementError ? e : new WeightPlacementError({ file: graphDir, message: `cannot place the weights of ${ckpt.dir} under ${graphDir}: ${e instanceof Error ? e.message : String(e)}` })),
  })

const graphDType: Partial<Record<SafetensorsDType, DType>> = { F32: "float32", F16: "float16", BF16: "bfloat16", F8_E4M3: "uint8", F8_E5M2: "uint8" }
const float8Values: Partial<Record<SafetensorsDType, Float32Array>> = { F8_E4M3: float8E4M3Values, F8_E5M2: float8E5M2Values }

/** Frozen weights as external-data initializers (float32 values; half precision cast in-graph, FP8 dequantized). */
export const externalWeights = (g: Graph, placement: WeightPlacement) => {
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
    const src = externalSource(placement.graphDir, placement.fileFor(ref.file), ref.fileOffset, ref.byteLength)
    const init = g.initializer(ref.name, dtype, [...ref.shape], src)
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

/** Serializes `g` to `<graphDir>/<name>.onnx` (atomically) and returns the path for createSession. */
export const writeGraph = (g: Graph, placement: WeightPlacement, name: string): Effect.Effect<string, WeightPlacementError> =>
  Effect.try({
    try: () => {
      const file = path.join(placement.graphDir, `${name}.onnx`)
      const tmp = `${file}.${process.pid}.tmp`
      fs.writeFileSync(tmp, serialize(g))
      fs.renameSync(tmp, file)
      return file
    },
    catch: (e) => new WeightPlacementError({ file: placement.graphDir, message: `cannot write the graph ${name}.onnx: ${e instanceof Error ? e.message : String(e)}` }),
  })
