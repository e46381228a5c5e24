// Safetensors reader and writer (https://github.com/huggingface/safetensors, format section).
//
// Layout: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON header, then the data section.
// The header maps tensor names to { dtype, shape, data_offsets: [begin, end] } (offsets relative
// to the data section) plus an optional "__metadata__" map of string to string. Valid files have
// tensors that exactly tile the data section (no gap, no overlap), which is what the reference
// Rust implementation enforces and what we enforce here.
//
// Tensor data is kept as raw little-endian bytes (`Uint8Array`); the conversion helpers at the end
// turn float16 / bfloat16 / FP8 (E4M3FN, E5M2) / any numeric dtype into Float32Array / Float64Array
// (Node 20 has no Float16Array). The header reader reports each tensor's absolute byte offset in the file so ONNX
// graphs can reference weights as external data without copying them.
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"

export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "F8_E4M3"
  | "F8_E5M2"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL"

export const dtypeByteSize: Readonly<Record<SafetensorsDType, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
}

export const isSafetensorsDType = (s: unknown): s is SafetensorsDType =>
  typeof s === "string" && Object.prototype.hasOwnProperty.call(dtypeByteSize, s)

/** Upper bound on the JSON header, the same one the reference implementation uses (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000

/** Every failure of this module: which file, which tensor (when one is concerned), and what is wrong. */
export class SafetensorsError extends Data.TaggedError("SafetensorsError")<{
  readonly file: string
  readonly tensor: string | undefined
  readonly message: string
}> {}

const fail = (file: string, tensor: string | undefined, what: string) =>
  new SafetensorsError({
    file,
    tensor,
    message: `${file}: ${tensor === undefined ? "" : `tensor "${tensor}": `}${what}`,
  })

/** A tensor held in memory: dtype, shape and its raw little-endian bytes. */
export interface Tensor {
  readonly dtype: SafetensorsDType
  readonly shape: ReadonlyArray<number>
  readonly data: Uint8Array
}

/** Where one tensor lives inside a safetensors file. */
export interface TensorLocation {
  readonly name: string
  readonly dtype: SafetensorsDType
  readonly shape: ReadonlyArray<number>
  /** Absolute byte offset of the tensor's first byte in the file. */
  readonly fileOffset: number
  readonly byteLength: number
}

export interface SafetensorsHeader {
  readonly file: string
  /** Absolute byte offset where the data section starts (8 + header length). */
  readonly dataOffset: number
  readonly metadata: Readonly<Record<string, string>>
  /** Tensors in header order, keyed by name. */
  readonly tensors: ReadonlyMap<string, TensorLocation>
}

export interface SafetensorsContents {
  readonly metadata: Readonly<Record<string, string>>
  readonly tensors: ReadonlyMap<string, Tensor>
}

export const elementCount = (shape: ReadonlyArray<number>): number => shape.reduce((a, b) => a * b, 1)

const isDim = (d: unknown): d is number => typeof d === "number" && Number.isSafeInteger(d) && d >= 0

/**
 * Parses and validates the header of a safetensors file.
 * `prefix` holds at least the first 8 + N bytes of the file; `fileSize` is the whole file's size.
 */
export const parseHeader = (
  file: string,
  prefix: Uint8Array,
  fileSize: number,
): Effect.Effect<SafetensorsHeader, SafetensorsError> =>
  Effect.suspend(() => {
    if (fileSize < 8 || prefix.byteLength < 8)
      return Effect.fail(fail(file, undefined, `file is ${fileSize} bytes, too short for the 8-byte header length`))
    const view = new DataView(prefix.buffer, prefix.byteOffset, prefix.byteLength)
    const n = view.getBigUint64(0, true)
    if (n > BigInt(MAX_HEADER_BYTES))
      return Effect.fail(fail(file, undefined, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`))
    const headerLength = Number(n)
    if (8 + headerLength > fileSize)
      return Effect.fail(fail(file, undefined, `header length ${headerLength} runs past the end of the ${fileSize}-byte file`))
    if (8 + headerLength > prefix.byteLength)
      return Effect.fail(fail(file, undefined, `only ${prefix.byteLength} bytes given, header needs ${8 + headerLength}`))
    let json: unknown
    try {
      json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(prefix.subarray(8, 8 + headerLength)))
    } catch (e) {
      return Effect.fail(fail(file, undefined, `header is not valid UTF-8 JSON: ${e instanceof Error ? e.message : String(e)}`))
    }
    if (json === null || typeof json !== "object" || Array.isArray(json))
      return Effect.fail(fail(file, undefined, "header JSON is not an object"))
    const dataOffset = 8 + headerLength
    const dataSize = fileSize - dataOffset
    let metadata: Record<string, string> = {}
    const entries: Array<{ name: string; dtype: SafetensorsDType; shape: number[]; begin: number; end: number }> = []
    for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
      if (name === "__metadata__") {
        if (value === null || typeof value !== "object" || Array.isArray(value))
          return Effect.fail(fail(file, undefined, `"__metadata__" must be an object of strings`))
        for (const [k, v] of Object.entries(value))
          if (typeof v !== "string")
            return Effect.fail(fail(file, undefined, `"__metadata__" field "${k}" must be a string, got ${JSON.stringify(v)}`))
        metadata = value as Record<string, string>
        continue
      }
      if (value === null || typeof value !== "object")
        return Effect.fail(fail(file, name, "header entry is not an object"))
      const { dtype, shape, data_offsets } = value as Record<string, unknown>
      if (!isSafetensorsDType(dtype))
        return Effect.fail(fail(file, name, `unknown dtype ${JSON.stringify(dtype)} (expected one of ${Object.keys(dtypeByteSize).join(", ")})`))
      if (!Array.isArray(shape) || !shape.every(isDim))
        return Effect.fail(fail(file, name, `shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`))
      if (!Array.isArray(data_offsets) || data_offsets.length !== 2 || !data_offsets.every(isDim))
        return Effect.fail(fail(file, name, `data_offsets must be [begin, end] non-negative integers, got ${JSON.stringify(data_offsets)}`))
      const [begin, end] = data_offsets as [number, number]
      if (end < begin) return Effect.fail(fail(file, name, `data_offsets [${begin}, ${end}] end before begin`))
      if (end > dataSize)
        return Effect.fail(fail(file, name, `data_offsets [${begin}, ${end}] out of range: the data section has ${dataSize} bytes`))
      const expected = elementCount(shape) * dtypeByteSize[dtype]
      if (end - begin !== expected)
        return Effect.fail(
          fail(file, name, `byte length ${end - begin} does not match dtype ${dtype} and shape [${shape.join(", ")}] (expected ${expected})`),
        )
      entries.push({ name, dtype, shape, begin, end })
    }
    // Tensors must tile the data section exactly, like the reference implementation requires.
    const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end)
    let cursor = 0
    let previous: string | undefined
    for (const e of sorted) {
      if (e.begin < cursor)
        return Effect.fail(fail(file, e.name, `data_offsets [${e.begin}, ${e.end}] overlap tensor "${previous}" which ends at ${cursor}`))
      if (e.begin > cursor)
        return Effect.fail(fail(file, e.name, `data_offsets [${e.begin}, ${e.end}] leave a gap after byte ${cursor} of the data section`))
      cursor = e.end
      previous = e.name
    }
    if (cursor !== dataSize)
      return Effect.fail(fail(file, undefined, `tensors cover ${cursor} bytes but the data section has ${dataSize} (truncated or trailing bytes)`))
    const tensors = new Map<string, TensorLocation>()
    for (const e of entries)
      tensors.set(e.name, { name: e.name, dtype: e.dtype, shape: e.shape, fileOffset: dataOffset + e.begin, byteLength: e.end - e.begin })
    return Effect.succeed({ file, dataOffset, metadata, tensors })
  })

const ioError = (file: string, doing: string) => (cause: unknown) =>
  fail(file, undefined, `cannot ${doing}: ${cause instanceof Error ? cause.message : String(cause)}`)

/** Reads only the header of a file (8 + N bytes), not the tensor data. */
export const readHeader = (file: string): Effect.Effect<SafetensorsHeader, SafetensorsError> =>
  Effect.gen(function* () {
    const prefix = yield* Effect.try({
      try: () => {
        const fd = fs.openSync(file, "r")
        try {
          const size = fs.fstatSync(fd).size
          const lengthBytes = Buffer.alloc(8)
          const got = fs.readSync(fd, lengthBytes, 0, 8, 0)
          const n = got === 8 ? lengthBytes.readBigUInt64LE(0) : 0n
          // Read the header only when its length is plausible; parseHeader reports the problem otherwise.
          const want = n <= BigInt(MAX_HEADER_BYTES) && 8n + n <= BigInt(size) ? 8 + Number(n) : got
          const buf = Buffer.alloc(want)
          fs.readSync(fd, buf, 0, want, 0)
          return { buf: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), size }
        } finally {
          fs.closeSync(fd)
        }
      },
      catch: ioError(file, "read header"),
    })
    return yield* parseHeader(file, prefix.buf, prefix.size)
  })

/** Node's fs calls move at most 2 GiB at once; larger tensors are read and written in pieces. */
const IO_PIECE = 1 << 30

/** Reads `length` bytes at `offset` of an open file into a new buffer. */
const readAt = (fd: number, offset: number, length: number): Uint8Array => {
  const out = new Uint8Array(length)
  let done = 0
  while (done < length) {
    const got = fs.readSync(fd, out, done, Math.min(length - done, IO_PIECE), offset + done)
    if (got === 0) throw new Error(`unexpected end of file at byte ${offset + done}`)
    done += got
  }
  return out
}

/** Reads `length` bytes at absolute `offset` of `file` (e.g. a TensorLocation's fileOffset and byteLength). */
export const readBytes = (file: string, offset: number, length: number, tensor?: string): Effect.Effect<Uint8Array, SafetensorsError> =>
  Effect.try({
    try: () => {
      const fd = fs.openSync(file, "r")
      try {
        return readAt(fd, offset, length)
      } finally {
        fs.closeSync(fd)
      }
    },
    catch: (e) => fail(file, tensor, `cannot read ${length} bytes at offset ${offset}: ${e instanceof Error ? e.message : String(e)}`),
  })

/** Reads one tensor's bytes from a file whose header was read with `readHeader`. */
export const readTensor = (header: SafetensorsHeader, name: string): Effect.Effect<Tensor, SafetensorsError> => {
  const loc = header.tensors.get(name)
  if (loc === undefined) return Effect.fail(fail(header.file, name, "no such tensor in this file"))
  return Effect.map(readBytes(header.file, loc.fileOffset, loc.byteLength, name), (data) => ({ dtype: loc.dtype, shape: loc.shape, data }))
}

/** Decodes a whole safetensors byte buffer. Tensor data are views into `bytes` (no copy). */
export const decode = (bytes: Uint8Array, file = "<bytes>"): Effect.Effect<SafetensorsContents, SafetensorsError> =>
  Effect.map(parseHeader(file, bytes, bytes.byteLength), (header) => {
    const tensors = new Map<string, Tensor>()
    for (const t of header.tensors.values())
      tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data: bytes.subarray(t.fileOffset, t.fileOffset + t.byteLength) })
    return { metadata: header.metadata, tensors }
  })

/** Reads and decodes a whole file into memory. */
export const readFile = (file: string): Effect.Effect<SafetensorsContents, SafetensorsError> =>
  Effect.flatMap(
    Effect.try({ try: () => new Uint8Array(fs.readFileSync(file)), catch: ioError(file, "read file") }),
    (bytes) => decode(bytes, file),
  )

/** What the writer needs to know about a tensor before its bytes are produced. */
export interface TensorSpec {
  readonly name: string
  readonly dtype: SafetensorsDType
  readonly shape: ReadonlyArray<number>
}

/**
 * Lays out the header for the given tensors. Tensors are placed by decreasing element size, then
 * name (as Python's safetensors does), and the header is space-padded to a multiple of 8 bytes, so
 * every tensor starts at a file offset aligned to its element size.
 */
export const layout = (
  specs: ReadonlyArray<TensorSpec>,
  metadata: Readonly<Record<string, string>> = {},
  file = "<bytes>",
): Effect.Effect<{ headerBytes: Uint8Array; order: ReadonlyArray<TensorSpec & { byteLength: number }> }, SafetensorsError> =>
  Effect.suspend(() => {
    const seen = new Set<string>()
    for (const s of specs) {
      const shape: ReadonlyArray<number> = s.shape
      if (s.name === "__metadata__") return Effect.fail(fail(file, s.name, "a tensor cannot be named __metadata__"))
      if (seen.has(s.name)) return Effect.fail(fail(file, s.name, "duplicate tensor name"))
      seen.add(s.name)
      if (!s.shape.every(isDim)) return Effect.fail(fail(file, s.name, `invalid shape [${shape.join(", ")}]`))
      if (!isSafetensorsDType(s.dtype)) return Effect.fail(fail(file, s.name, `unknown dtype ${JSON.stringify(s.dtype)}`))
    }
    const order = [...specs]
      .sort((a, b) => dtypeByteSize[b.dtype] - dtypeByteSize[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((s) => ({ ...s, byteLength: elementCount(s.shape) * dtypeByteSize[s.dtype] }))
    const header: Record<string, unknown> = {}
    if (Object.keys(metadata).length > 0) header["__metadata__"] = metadata
    let offset = 0
    for (const s of order) {
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + s.byteLength] }
      offset += s.byteLength
    }
    const json = new TextEncoder().encode(JSON.stringify(header))
    const padded = Math.ceil(json.byteLength / 8) * 8
    const headerBytes = new Uint8Array(8 + padded).fill(0x20)
    new DataView(headerBytes.buffer).setBigUint64(0, BigInt(padded), true)
    headerBytes.set(json, 8)
    return Effect.succeed({ headerBytes, order })
  })

const checkTensor = (file: string, name: string, t: Tensor): SafetensorsError | undefined => {
  const expected = elementCount(t.shape) * (dtypeByteSize[t.dtype] ?? NaN)
  return t.data.byteLength === expected
    ? undefined
    : fail(file, name, `has ${t.data.byteLength} bytes but dtype ${t.dtype} and shape [${t.shape.join(", ")}] need ${expected}`)
}

/** Encodes tensors into one safetensors byte buffer (for small payloads; see `writeFile` for big ones). */
export const encode = (
  tensors: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Effect.Effect<Uint8Array, SafetensorsError> =>
  Effect.gen(function* () {
    const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors))
    for (const [name, t] of map) {
      const bad = checkTensor("<bytes>", name, t)
      if (bad) return yield* Effect.fail(bad)
    }
    const { headerBytes, order } = yield* layout([...map].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })), metadata)
    const out = new Uint8Array(headerBytes.byteLength + order.reduce((a, s) => a + s.byteLength, 0))
    out.set(headerBytes, 0)
    let offset = headerBytes.byteLength
    for (const s of order) {
      out.set(map.get(s.name)!.data, offset)
      offset += s.byteLength
    }
    return out
  })

/** A tensor whose bytes are produced lazily, in chunks, while the file is written. */
export interface StreamedTensor extends TensorSpec {
  /** Yields the tensor's bytes in order; the chunks must add up to exactly its byte length. */
  readonly chunks: () => Iterable<Uint8Array>
}

/**
 * Writes a safetensors file without holding more than one chunk in memory, so multi-gigabyte
 * checkpoints can be produced. Written to a temporary name in the same directory, then renamed,
 * so a crash never leaves a half file under the final name.
 */
export const writeFileStreamed = (
  file: string,
  tensors: ReadonlyArray<StreamedTensor>,
  metadata: Readonly<Record<string, string>> = {},
): Effect.Effect<void, SafetensorsError> =>
  Effect.gen(function* () {
    const { headerBytes, order } = yield* layout(tensors, metadata, file)
    const byName = new Map(tensors.map((t) => [t.name, t]))
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`)
    yield* Effect.try({
      try: () => {
        const fd = fs.openSync(tmp, "w")
        try {
          fs.writeSync(fd, headerBytes)
          for (const s of order) {
            let written = 0
            for (const chunk of byName.get(s.name)!.chunks()) {
              written += chunk.byteLength
              if (written > s.byteLength) break
              let done = 0
              while (done < chunk.byteLength) done += fs.writeSync(fd, chunk, done, Math.min(chunk.byteLength - done, IO_PIECE))
            }
            if (written !== s.byteLength) throw fail(file, s.name, `produced ${written > s.byteLength ? "more than" : written} bytes, expected ${s.byteLength}`)
          }
          fs.fsyncSync(fd)
        } finally {
          fs.closeSync(fd)
        }
        fs.renameSync(tmp, file)
      },
      catch: (e) => {
        fs.rmSync(tmp, { force: true })
        return e instanceof SafetensorsError ? e : ioError(file, "write file")(e)
      },
    })
  })

/** Writes in-memory tensors to a file (atomically, via a temporary name). */
export const writeFile = (
  file: string,
  tensors: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Effect.Effect<void, SafetensorsError> =>
  Effect.gen(function* () {
    const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors))
    for (const [name, t] of map) {
      const bad = checkTensor(file, name, t)
      if (bad) return yield* Effect.fail(bad)
    }
    yield* writeFileStreamed(
      file,
      [...map].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, chunks: () => [t.data] })),
      metadata,
    )
  })

// ---------------------------------------------------------------------------------------------
// Number conversions. Float16 and bfloat16 values are handled as their uint16 bit patterns.

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** IEEE binary16 bits to a number (exact). */
export const float16BitsToNumber = (h: number): number => {
  const sign = h & 0x8000 ? -1 : 1
  const exp = (h >> 10) & 0x1f
  const frac = h & 0x3ff
  if (exp === 0) return sign * frac * 2 ** -24
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN
  return sign * (1 + frac / 1024) * 2 ** (exp - 15)
}

const f64 = new Float64Array(1)
const f64Words = new Uint32Array(f64.buffer)

/**
 * Rounds a number once, to nearest even, to an IEEE-style binary format with `expBits` exponent and
 * `mantBits` fraction bits (subnormals, overflow to infinity), and returns its bits. Working from
 * the double itself matters: going through float32 first rounds twice, and a value just above a
 * half-way point of the target format can land exactly on it in float32 and then round to even.
 * Integer work on the double's two 32-bit words; the formats here drop at least 32 of its 52
 * fraction bits, so the low word only tells whether the dropped part is above a tie.
 */
const roundToBinary = (x: number, expBits: number, mantBits: number): number => {
  const bias = (1 << (expBits - 1)) - 1
  const infinity = ((1 << expBits) - 1) << mantBits
  f64[0] = x
  const hi = f64Words[1]
  const lo = f64Words[0]
  const sign = (hi >>> 31) << (expBits + mantBits)
  const biased = (hi >>> 20) & 0x7ff
  if (biased === 0x7ff) return sign | infinity | ((hi & 0xfffff) !== 0 || lo !== 0 ? 1 << (mantBits - 1) : 0)
  const e = biased - 1023
  if (e > bias) return sign | infinity
  const minExp = 1 - bias
  // bits of the 21-bit top of the significand (implicit 1 included) that the target drops:
  // 52 - mantBits - 32 for a normal result, more below the target's smallest normal
  const drop = 20 - mantBits + Math.max(0, minExp - e)
  // double subnormals (biased 0) are far below any target subnormal: they drop everything
  if (biased === 0 || drop > 21) return sign
  const significand = (hi & 0xfffff) | 0x100000
  let q = significand >>> drop
  const rest = significand & ((1 << drop) - 1)
  const half = 1 << (drop - 1)
  if (rest > half || (rest === half && (lo !== 0 || (q & 1) === 1))) q += 1
  // q counts target ulps: [2^mantBits, 2^(mantBits+1)] for normals (the top carries into the
  // exponent), [0, 2^mantBits] for subnormals (the top is the smallest normal).
  const bits = ((Math.max(e, minExp) + bias - 1) << mantBits) + q
  return sign | Math.min(bits, infinity)
}

/** A number to IEEE binary16 bits, rounded once to nearest even (overflow to infinity, like numpy). */
export const numberToFloat16Bits = (x: number): number => roundToBinary(x, 5, 10)

/** An 8-bit float format: bits to a number (exact), for the 256 codes at once. */
const float8Table = (expBits: number, mantBits: number, special: (bits: number) => number | undefined): Float32Array =>
  Float32Array.from({ length: 256 }, (_, b) => {
    const s = special(b & 0x7f)
    const sign = b & 0x80 ? -1 : 1
    if (s !== undefined) return sign * s
    const bias = (1 << (expBits - 1)) - 1
    const exp = (b >> mantBits) & ((1 << expBits) - 1)
    const frac = b & ((1 << mantBits) - 1)
    return exp === 0 ? sign * frac * 2 ** (1 - bias - mantBits) : sign * (1 + frac / (1 << mantBits)) * 2 ** (exp - bias)
  })

/** OCP FP8 E4M3FN (PyTorch float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN, max 448. */
export const float8E4M3Values: Float32Array = float8Table(4, 3, (b) => (b === 0x7f ? NaN : undefined))
/** OCP FP8 E5M2 (PyTorch float8_e5m2): IEEE-like, bias 15, S.11111.00 infinite, S.11111.{01,10,11} NaN. */
export const float8E5M2Values: Float32Array = float8Table(5, 2, (b) => (b === 0x7c ? Infinity : b > 0x7c ? NaN : undefined))

/** bfloat16 bits to a number (exact). */
export const bfloat16BitsToNumber = (b: number): number => {
  u32[0] = (b & 0xffff) << 16
  return f32[0]
}

/** A number to bfloat16 bits, rounded once to nearest even (NaN stays NaN, overflow to infinity). */
export const numberToBfloat16Bits = (x: number): number => roundToBinary(x, 8, 7)

/** Float32 values to bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export const float32ToBfloat16 = (values: Float32Array): Uint16Array => {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length)
  const out = new Uint16Array(values.length)
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]
    out[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16
  }
  return out
}

/** bfloat16 bits to float32 values (exact). */
export const bfloat16ToFloat32 = (bits: Uint16Array): Float32Array => {
  const out = new Uint32Array(bits.length)
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16
  return new Float32Array(out.buffer)
}

/** Float32 values to float16 bits, rounding to nearest even. */
export const float32ToFloat16 = (values: Float32Array): Uint16Array => {
  const out = new Uint16Array(values.length)
  for (let i = 0; i < values.length; i++) out[i] = numberToFloat16Bits(values[i])
  return out
}

let float16Table: Float32Array | undefined

/** float16 bits to float32 values (exact, through a 65536-entry table). */
export const float16ToFloat32 = (bits: Uint16Array): Float32Array => {
  if (float16Table === undefined) {
    float16Table = new Float32Array(0x10000)
    for (let h = 0; h < 0x10000; h++) float16Table[h] = float16BitsToNumber(h)
  }
  const out = new Float32Array(bits.length)
  for (let i = 0; i < bits.length; i++) out[i] = float16Table[bits[i]]
  return out
}

// Uint8Array.prototype.slice always copies; a Node Buffer's own slice() is a view into a
// shared pool, whose .buffer is neither aligned nor this tensor's bytes alone.
const copyAligned = (data: Uint8Array): ArrayBuffer => Uint8Array.prototype.slice.call(data).buffer as ArrayBuffer

/** Converts any numeric tensor to float64 values (row-major). 64-bit integers beyond 2^53 lose precision. */
export const toFloat64 = (t: Tensor): Float64Array => {
  const n = elementCount(t.shape)
  const out = new Float64Array(n)
  const buf = copyAligned(t.data)
  switch (t.dtype) {
    case "F16":
      out.set(float16ToFloat32(new Uint16Array(buf)))
      return out
    case "BF16":
      out.set(bfloat16ToFloat32(new Uint16Array(buf)))
      return out
    case "F8_E4M3":
    case "F8_E5M2": {
      const table = t.dtype === "F8_E4M3" ? float8E4M3Values : float8E5M2Values
      for (let i = 0; i < n; i++) out[i] = table[t.data[i]]
      return out
    }
    case "I64": {
      const v = new BigInt64Array(buf)
      for (let i = 0; i < n; i++) out[i] = Number(v[i])
      return out
    }
    case "U64": {
      const v = new BigUint64Array(buf)
      for (let i = 0; i < n; i++) out[i] = Number(v[i])
      return out
    }
    default: {
      out.set(numberView(t.dtype, buf))
      return out
    }
  }
}

const numberView = (dtype: SafetensorsDType, buf: ArrayBuffer): ArrayLike<number> => {
  switch (dtype) {
    case "F64":
      return new Float64Array(buf)
    case "F32":
      return new Float32Array(buf)
    case "I32":
      return new Int32Array(buf)
    case "I16":
      return new Int16Array(buf)
    case "I8":
      return new Int8Array(buf)
    case "U32":
      return new Uint32Array(buf)
    case "U16":
      return new Uint16Array(buf)
    case "U8":
    case "BOOL":
      return new Uint8Array(buf)
    default:
      throw new Error(`numberView: ${dtype} is not a plain number type`)
  }
}

/** Converts any numeric tensor to float32 values (row-major). */
export const toFloat32 = (t: Tensor): Float32Array => {
  switch (t.dtype) {
    case "F32":
      return new Float32Array(copyAligned(t.data))
    case "F16":
      return float16ToFloat32(new Uint16Array(copyAligned(t.data)))
    case "BF16":
      return bfloat16ToFloat32(new Uint16Array(copyAligned(t.data)))
    default:
      return Float32Array.from(toFloat64(t))
  }
}

/**
 * Builds a tensor of the given dtype from numbers (row-major), rounding once to nearest even for
 * F16/BF16 and truncating toward zero for integer dtypes; BOOL stores x !== 0. FP8 is read only.
 */
export const fromNumbers = (
  values: ArrayLike<number>,
  dtype: SafetensorsDType,
  shape: ReadonlyArray<number>,
): Tensor => {
  const n = elementCount(shape)
  if (values.length !== n) throw new Error(`fromNumbers: ${values.length} values for shape [${shape.join(", ")}]`)
  const bytes = new Uint8Array(n * dtypeByteSize[dtype])
  const buf = bytes.buffer
  switch (dtype) {
    case "F16":
    case "BF16": {
      const v = new Uint16Array(buf)
      const round = dtype === "F16" ? numberToFloat16Bits : numberToBfloat16Bits
      for (let i = 0; i < n; i++) v[i] = round(values[i])
      break
    }
    case "I64": {
      const v = new BigInt64Array(buf)
      for (let i = 0; i < n; i++) v[i] = BigInt(Math.trunc(values[i]))
      break
    }
    case "U64": {
      const v = new BigUint64Array(buf)
      for (let i = 0; i < n; i++) v[i] = BigInt(Math.trunc(values[i]))
      break
    }
    case "BOOL": {
      for (let i = 0; i < n; i++) bytes[i] = values[i] !== 0 ? 1 : 0
      break
    }
    default: {
      const v = numberView(dtype, buf) as Float64Array
      for (let i = 0; i < n; i++) v[i] = values[i]
    }
  }
  return { dtype, shape: [...shape], data: bytes }
}
