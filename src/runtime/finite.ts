// Non-finite values (NaN, ±Infinity) in what model stages compute and in the weights they read.
// NaN weights do not crash anything: sampling still picks tokens (and decodes them to U+FFFD
// text), scoring stores NaN log-probs, and the engine would cache both as successes. So every
// model stage passes its float outputs through checkFinite / checkFiniteRows, which fail with the
// stage, the tensor and the first bad position; and loadCheckpoint runs checkWeightFiles.
//
// checkWeightFiles reads each safetensors file once per content: the verdict is remembered under
// <cache>/checks/weights/ ($PIPE_CACHE_DIR or ./cache, as the CLI), keyed by the file's sha256,
// which is itself remembered per (real path, device, inode, size, mtime) so an unchanged file is
// not even hashed again. The first check of a file reads it once (hash and scan in one pass).
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import * as path from "node:path"
import { Data, Effect } from "effect"
import { readHeader, type SafetensorsDType, type TensorLocation } from "../core/safetensors.ts"

export class NonFiniteError extends Data.TaggedError("NonFiniteError")<{
  /** the stage (node) or file that produced the tensor */
  readonly source: string
  readonly tensor: string
  /** coordinates of the first non-finite element */
  readonly position: ReadonlyArray<number>
  readonly value: number
  readonly message: string
}> {}

/** Index of the first NaN or infinity in `data`, or -1. */
export const firstNonFinite = (data: ArrayLike<number>): number => {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i
  return -1
}

/** Row-major coordinates of flat `index` in `shape`. */
export const coordinatesOf = (index: number, shape: ReadonlyArray<number>): number[] => {
  const out = new Array<number>(shape.length)
  for (let d = shape.length - 1; d >= 0; d--) {
    out[d] = index % shape[d]
    index = Math.floor(index / shape[d])
  }
  return out
}

const nonFinite = (source: string, tensor: string, position: ReadonlyArray<number>, value: number, hint: string) =>
  new NonFiniteError({
    source,
    tensor,
    position,
    value,
    message: `${source}: ${tensor} is ${value} at [${position.join(", ")}]: ${hint}`,
  })

const outputHint = "the model produced non-finite values (NaN or infinite weights or activations, or a diverged training); the result is not cached"

/** Fails when `data` (a tensor of `shape`, row-major) holds a NaN or an infinity. */
export const checkFinite = (stage: string, tensor: string, data: ArrayLike<number>, shape: ReadonlyArray<number> = [data.length]): Effect.Effect<void, NonFiniteError> => {
  const i = firstNonFinite(data)
  return i < 0 ? Effect.void : Effect.fail(nonFinite(stage, tensor, coordinatesOf(i, shape), data[i], outputHint))
}

/**
 * Fails when a row of a ragged tensor (e.g. per-trajectory log-probs) holds a NaN or an infinity;
 * the position is [firstRow + row, column] (firstRow: where these rows start in the whole output).
 */
export const checkFiniteRows = (stage: string, tensor: string, rows: ReadonlyArray<ArrayLike<number>>, firstRow = 0): Effect.Effect<void, NonFiniteError> => {
  for (let r = 0; r < rows.length; r++) {
    const i = firstNonFinite(rows[r])
    if (i >= 0) return Effect.fail(nonFinite(stage, tensor, [firstRow + r, i], rows[r][i], outputHint))
  }
  return Effect.void
}

// ------------------------------------------------------------------------------ weight files

/** The first NaN or infinity in raw little-endian elements of a float dtype: [index, value]; none for integer dtypes. */
const firstBad: Partial<Record<SafetensorsDType, (bytes: Uint8Array) => readonly [number, number] | undefined>> = {
  F64: (b) => found(new Float64Array(b.buffer, b.byteOffset, b.byteLength / 8)),
  F32: (b) => found(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4)),
  // half precision: all exponent bits set; a zero mantissa is an infinity, any other a NaN
  F16: (b) => halfBad(b, 0x7c00, 0x03ff),
  BF16: (b) => halfBad(b, 0x7f80, 0x007f),
}

const found = (a: Float32Array | Float64Array): readonly [number, number] | undefined => {
  const i = firstNonFinite(a)
  return i < 0 ? undefined : [i, a[i]]
}

const halfBad = (b: Uint8Array, exponent: number, mantissa: number): readonly [number, number] | undefined => {
  const u = new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2)
  for (let i = 0; i < u.length; i++)
    if ((u[i] & exponent) === exponent) return [i, u[i] & mantissa ? Number.NaN : u[i] & 0x8000 ? -Infinity : Infinity]
  return undefined
}

const bytesOf: Partial<Record<SafetensorsDType, number>> = { F64: 8, F32: 4, F16: 2, BF16: 2 }

export type WeightVerdict =
  | { readonly finite: true }
  | { readonly finite: false; readonly tensor: string; readonly position: ReadonlyArray<number>; readonly value: "NaN" | "Infinity" | "-Infinity" }

export class WeightCheckError extends Data.TaggedError("WeightCheckError")<{ readonly file: string; readonly message: string }> {}

const CHUNK = 64 << 20

/** Reads `file` once: its sha256 and the first non-finite element of its float tensors. */
const scanFile = (file: string, tensors: ReadonlyArray<TensorLocation>): { hash: string; verdict: WeightVerdict } => {
  const hash = createHash("sha256")
  // allocUnsafeSlow: a buffer of its own, so typed-array views over it start aligned
  const buf = Buffer.allocUnsafeSlow(CHUNK)
  const fd = fs.openSync(file, "r")
  let verdict: WeightVerdict = { finite: true }
  try {
    const size = fs.fstatSync(fd).size
    let pos = 0
    /** Hashes [pos, end) chunk by chunk; `scan` sees each chunk (element-aligned when `step` is the element size). */
    const consume = (end: number, step: number, scan?: (chunk: Uint8Array, first: number) => void) => {
      const span = CHUNK - (CHUNK % step)
      while (pos < end) {
        const n = Math.min(span, end - pos)
        let got = 0
        while (got < n) {
          const r = fs.readSync(fd, buf, got, n - got, pos + got)
          if (r === 0) throw new Error(`${file}: unexpected end of file at byte ${pos + got} of ${size}`)
          got += r
        }
        const chunk = buf.subarray(0, n)
        hash.update(chunk)
        scan?.(chunk, pos)
        pos += n
      }
    }
    for (const t of [...tensors].sort((a, b) => a.fileOffset - b.fileOffset)) {
      consume(t.fileOffset, 1)
      const check = firstBad[t.dtype]
      const width = bytesOf[t.dtype] ?? 1
      consume(t.fileOffset + t.byteLength, width, (chunk, first) => {
        if (!check || !verdict.finite) return
        const bad = check(chunk)
        if (bad) verdict = { finite: false, tensor: t.name, position: coordinatesOf((first - t.fileOffset) / width + bad[0], t.shape), value: String(bad[1]) as "NaN" }
      })
    }
    consume(size, 1)
  } finally {
    fs.closeSync(fd)
  }
  return { hash: hash.digest("hex"), verdict }
}

const checksDir = () => path.resolve(process.env.PIPE_CACHE_DIR ?? "cache", "checks", "weights")

/** Writes `text` to `file` atomically; a memo that cannot be written is only a lost shortcut. */
const remember = (file: string, text: string) => {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true })
    const tmp = `${file}.${process.pid}.tmp`
    fs.writeFileSync(tmp, text)
    fs.renameSync(tmp, file)
  } catch {
    // read-only cache: the check reruns next time, nothing else is lost
  }
}

const readMemo = (file: string): string | undefined => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return undefined
  }
}

/** The verdict for one safetensors file: remembered per content hash (see the header). */
export const weightVerdict = (file: string): Effect.Effect<WeightVerdict, WeightCheckError> =>
  Effect.gen(function* () {
    const fail = (e: unknown) => new WeightCheckError({ file, message: `${file}: cannot check the weights for NaN/infinity: ${e instanceof Error ? e.message : String(e)}` })
    const { real, st } = yield* Effect.try({
      try: () => {
        const real = fs.realpathSync(file)
        return { real, st: fs.statSync(real, { bigint: true }) }
      },
      catch: fail,
    })
    const dir = checksDir()
    const statKey = createHash("sha256").update(`${real}\0${st.dev}\0${st.ino}\0${st.size}\0${st.mtimeNs}`).digest("hex")
    const statFile = path.join(dir, "by-stat", statKey)
    const known = readMemo(statFile)
    if (known !== undefined) {
      const verdict = readMemo(path.join(dir, "by-hash", known.trim()))
      if (verdict !== undefined) return JSON.parse(verdict) as WeightVerdict
    }
    const header = yield* Effect.mapError(readHeader(real), (e) => new WeightCheckError({ file, message: e.message }))
    const { hash, verdict } = yield* Effect.try({ try: () => scanFile(real, [...header.tensors.values()]), catch: fail })
    remember(path.join(dir, "by-hash", hash), JSON.stringify(verdict))
    remember(statFile, hash)
    return verdict
  })

/** Fails on the first weight file holding a NaN or an infinity, naming the file, the tensor and the position. */
export const checkWeightFiles = (files: ReadonlyArray<string>): Effect.Effect<void, NonFiniteError | WeightCheckError> =>
  Effect.forEach(
    files,
    (file) =>
      Effect.flatMap(weightVerdict(file), (v) =>
        v.finite ? Effect.void : Effect.fail(nonFinite(file, `weight "${v.tensor}"`, v.position, Number(v.value), "the checkpoint holds NaN or infinite weights; a model with them samples garbage and scores NaN")),
      ),
    { discard: true },
  )
