import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import {
  bfloat16BitsToNumber,
  bfloat16ToFloat32,
  float16ToFloat32,
  float32ToBfloat16,
  float32ToFloat16,
  decode,
  encode,
  float16BitsToNumber,
  float8E4M3Values,
  float8E5M2Values,
  fromNumbers,
  numberToBfloat16Bits,
  numberToFloat16Bits,
  readFile,
  readHeader,
  readTensor,
  SafetensorsError,
  toFloat32,
  toFloat64,
  writeFile,
  writeFileStreamed,
} from "../../src/core/safetensors.ts"

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "pipe-st-"))

/** Builds a file the way the safetensors spec describes it: u64 LE length, JSON header (space padded), data. */
const handBuilt = (header: object | string, data: Uint8Array, pad = true): Uint8Array => {
  let json = typeof header === "string" ? header : JSON.stringify(header)
  if (pad) while (json.length % 8 !== 0) json += " "
  const h = new TextEncoder().encode(json)
  const out = new Uint8Array(8 + h.length + data.length)
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true)
  out.set(h, 8)
  out.set(data, 8 + h.length)
  return out
}

const failure = (eff: Effect.Effect<unknown, SafetensorsError>): SafetensorsError => {
  const exit = Effect.runSyncExit(Effect.flip(eff))
  if (Exit.isFailure(exit)) throw new Error("expected a SafetensorsError, got a defect or success")
  return exit.value as SafetensorsError
}

const le = (values: number[], Ctor: Float32ArrayConstructor | Int32ArrayConstructor) => new Uint8Array(new Ctor(values).buffer)

describe("safetensors decode", () => {
  it("reads a file laid out as Python's safetensors writes it (metadata, padding, mixed dtypes)", () => {
    // torch: save_file({"w": tensor([[1.,2.],[3.,4.]]), "ids": tensor([7,-1], dtype=int32),
    //                   "h": tensor([1.0, -2.0], dtype=float16)}, metadata={"format": "pt"})
    const data = new Uint8Array([
      ...le([1, 2, 3, 4], Float32Array),
      ...le([7, -1], Int32Array),
      0x00, 0x3c, 0x00, 0xc0, // float16 1.0, -2.0 little-endian
    ])
    const bytes = handBuilt(
      {
        __metadata__: { format: "pt" },
        w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] },
        ids: { dtype: "I32", shape: [2], data_offsets: [16, 24] },
        h: { dtype: "F16", shape: [2], data_offsets: [24, 28] },
      },
      data,
    )
    const c = Effect.runSync(decode(bytes, "x.safetensors"))
    expect(c.metadata).toEqual({ format: "pt" })
    expect([...c.tensors.keys()]).toEqual(["w", "ids", "h"])
    expect(Array.from(toFloat32(c.tensors.get("w")!))).toEqual([1, 2, 3, 4])
    expect(c.tensors.get("w")!.shape).toEqual([2, 2])
    expect(Array.from(toFloat64(c.tensors.get("ids")!))).toEqual([7, -1])
    expect(Array.from(toFloat64(c.tensors.get("h")!))).toEqual([1, -2])
  })

  it("accepts an unpadded header, an empty file and zero-sized tensors", () => {
    const c = Effect.runSync(decode(handBuilt({ e: { dtype: "F32", shape: [0, 3], data_offsets: [0, 0] } }, new Uint8Array(), false)))
    expect(c.tensors.get("e")!.data.byteLength).toBe(0)
    expect(Effect.runSync(decode(handBuilt({}, new Uint8Array()))).tensors.size).toBe(0)
  })

  const f32 = (shape: number[], offsets: number[]) => ({ dtype: "F32", shape, data_offsets: offsets })
  const cases: Array<[string, Uint8Array, RegExp, string | undefined]> = [
    ["too short", new Uint8Array(5), /too short/, undefined],
    ["header length too large", (() => { const b = new Uint8Array(16); new DataView(b.buffer).setBigUint64(0, 1n << 40n, true); return b })(), /exceeds/, undefined],
    ["header past end", (() => { const b = new Uint8Array(16); new DataView(b.buffer).setBigUint64(0, 100n, true); return b })(), /runs past the end/, undefined],
    ["bad JSON", handBuilt('{"a": {', new Uint8Array()), /not valid UTF-8 JSON/, undefined],
    ["JSON not an object", handBuilt("[1, 2]", new Uint8Array()), /not an object/, undefined],
    ["unknown dtype", handBuilt({ a: { dtype: "F8", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)), /unknown dtype "F8"/, "a"],
    ["bad shape", handBuilt({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)), /shape must be/, "a"],
    ["offsets out of range", handBuilt({ a: f32([2], [0, 8]) }, new Uint8Array(4)), /out of range/, "a"],
    ["length mismatch", handBuilt({ a: f32([3], [0, 8]) }, new Uint8Array(8)), /does not match dtype F32 and shape \[3\]/, "a"],
    ["overlap", handBuilt({ a: f32([2], [0, 8]), b: f32([2], [4, 12]) }, new Uint8Array(12)), /overlap tensor "a"/, "b"],
    ["gap", handBuilt({ a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, new Uint8Array(12)), /gap/, "b"],
    ["trailing bytes", handBuilt({ a: f32([1], [0, 4]) }, new Uint8Array(8)), /trailing/, undefined],
    ["metadata not strings", handBuilt({ __metadata__: { n: 3 } }, new Uint8Array()), /"n" must be a string/, undefined],
  ]
  for (const [what, bytes, message, tensor] of cases)
    it(`rejects ${what} with an error naming the file and tensor`, () => {
      const e = failure(decode(bytes, "bad.safetensors"))
      expect(e._tag).toBe("SafetensorsError")
      expect(e.file).toBe("bad.safetensors")
      expect(e.tensor).toBe(tensor)
      expect(e.message).toMatch(message)
      expect(e.message.startsWith("bad.safetensors: ")).toBe(true)
    })
})

describe("safetensors encode / write", () => {
  it("round-trips every dtype with metadata, aligned to element size", () => {
    const tensors = {
      f64: fromNumbers([1.5, -2.25], "F64", [2]),
      f32: fromNumbers([1, 2, 3, 4, 5, 6], "F32", [2, 3]),
      f16: fromNumbers([0.5, -1, 65504], "F16", [3]),
      bf16: fromNumbers([1, -3, 256], "BF16", [1, 3]),
      i64: fromNumbers([-5, 2 ** 40], "I64", [2]),
      i32: fromNumbers([-7], "I32", [1]),
      i16: fromNumbers([-300, 300], "I16", [2]),
      i8: fromNumbers([-128, 127], "I8", [2]),
      u8: fromNumbers([0, 255, 3], "U8", [3]),
      bool: fromNumbers([1, 0, 1], "BOOL", [3]),
      scalar: fromNumbers([42], "F32", []),
    }
    const bytes = Effect.runSync(encode(tensors, { format: "pt", note: "é" }))
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true))
    expect(headerLength % 8).toBe(0)
    const back = Effect.runSync(decode(bytes))
    expect(back.metadata).toEqual({ format: "pt", note: "é" })
    for (const [name, t] of Object.entries(tensors)) {
      const got = back.tensors.get(name)!
      expect(got.dtype).toBe(t.dtype)
      expect(got.shape).toEqual(t.shape)
      expect(Array.from(got.data)).toEqual(Array.from(t.data))
      expect((got.data.byteOffset - 0) % (t.data.byteLength / Math.max(1, t.shape.reduce((a, b) => a * b, 1)))).toBe(0)
    }
    expect(Array.from(toFloat64(back.tensors.get("i64")!))).toEqual([-5, 2 ** 40])
    expect(Array.from(toFloat64(back.tensors.get("bool")!))).toEqual([1, 0, 1])
  })

  it("rejects a tensor whose bytes do not match dtype and shape, naming it", () => {
    const e = failure(encode({ w: { dtype: "F32", shape: [3], data: new Uint8Array(8) } }))
    expect(e.tensor).toBe("w")
    expect(e.message).toMatch(/has 8 bytes but dtype F32 and shape \[3\] need 12/)
  })

  it("writes a file whose header gives absolute offsets of each tensor, readable one tensor at a time", () => {
    const dir = tmp()
    const file = path.join(dir, "m.safetensors")
    Effect.runSync(writeFile(file, { a: fromNumbers([1, 2, 3], "F32", [3]), b: fromNumbers([9, 8], "BF16", [2]) }, { k: "v" }))
    const header = Effect.runSync(readHeader(file))
    const raw = fs.readFileSync(file)
    const a = header.tensors.get("a")!
    expect(a.fileOffset % 4).toBe(0)
    expect(Array.from(new Float32Array(raw.buffer.slice(raw.byteOffset + a.fileOffset, raw.byteOffset + a.fileOffset + a.byteLength)))).toEqual([1, 2, 3])
    expect(Array.from(toFloat32(Effect.runSync(readTensor(header, "b"))))).toEqual([9, 8])
    expect(Effect.runSync(readFile(file)).metadata).toEqual({ k: "v" })
    expect(failure(readTensor(header, "zzz")).message).toMatch(/m.safetensors: tensor "zzz": no such tensor/)
    expect(fs.readdirSync(dir)).toEqual(["m.safetensors"])
  })

  it("converts tensors decoded from a Node Buffer (a view into a shared pool), not the pool's bytes", () => {
    const bytes = Effect.runSync(encode({ a: fromNumbers([1, 2, 3], "F32", [3]), h: fromNumbers([0.5, -2], "F16", [2]) }))
    // Buffer.from copies into Node's shared allocation pool, so its .buffer holds other bytes too.
    const pooled = Buffer.from(bytes)
    const c = Effect.runSync(decode(pooled, "pooled.safetensors"))
    expect(Array.from(toFloat32(c.tensors.get("a")!))).toEqual([1, 2, 3])
    expect(Array.from(toFloat32(c.tensors.get("h")!))).toEqual([0.5, -2])
  })

  it("streams tensors chunk by chunk and refuses a producer that yields the wrong byte count", () => {
    const dir = tmp()
    const file = path.join(dir, "s.safetensors")
    const chunks = function* () {
      for (let i = 0; i < 4; i++) yield new Uint8Array(new Float32Array([i, i + 0.5]).buffer)
    }
    Effect.runSync(writeFileStreamed(file, [{ name: "x", dtype: "F32", shape: [4, 2], chunks }]))
    expect(Array.from(toFloat32(Effect.runSync(readFile(file)).tensors.get("x")!))).toEqual([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
    const bad = path.join(dir, "bad.safetensors")
    const e = failure(writeFileStreamed(bad, [{ name: "x", dtype: "F32", shape: [3, 2], chunks }]))
    expect(e.tensor).toBe("x")
    expect(fs.existsSync(bad)).toBe(false)
    expect(fs.readdirSync(dir)).toEqual(["s.safetensors"])
  })

  it("reports a missing file as an error value naming it", () => {
    const e = failure(readHeader("/nonexistent/q.safetensors"))
    expect(e.file).toBe("/nonexistent/q.safetensors")
    expect(e.message).toMatch(/cannot read header/)
  })
})

describe("float16 / bfloat16 conversion", () => {
  it("float16 bits -> number -> bits is the identity on all 63488 non-NaN patterns", () => {
    for (let h = 0; h < 0x10000; h++) {
      const x = float16BitsToNumber(h)
      if (Number.isNaN(x)) continue
      expect(numberToFloat16Bits(x)).toBe(h)
    }
  })
  it("float16 matches numpy on known values, rounding ties to even", () => {
    // Expected bits from numpy: np.array([...], np.float32).astype(np.float16).view(np.uint16)
    const cases: Array<[number, number]> = [
      [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [1 / 3, 0x3555], [65504, 0x7bff], [65519, 0x7bff], [65520, 0x7c00],
      [2 ** -24, 0x0001], [2 ** -25, 0x0000], [1.5 * 2 ** -25, 0x0001], [6.1e-5, 0x03ff],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [-0, 0x8000], [Infinity, 0x7c00], [-1e9, 0xfc00],
    ]
    for (const [x, bits] of cases) expect([x, numberToFloat16Bits(x)]).toEqual([x, bits])
    expect(Number.isNaN(float16BitsToNumber(numberToFloat16Bits(NaN)))).toBe(true)
  })
  it("array conversions agree with the scalar ones, and toFloat32 reads F16 / BF16 tensors", () => {
    const xs = Float32Array.from([0, -0.1, 1 / 3, 65504, 3e-6, -7.5, 1e30])
    expect(Array.from(float32ToFloat16(xs))).toEqual(Array.from(xs, numberToFloat16Bits))
    expect(Array.from(float32ToBfloat16(xs))).toEqual(Array.from(xs, numberToBfloat16Bits))
    const h = float32ToFloat16(xs)
    expect(Array.from(float16ToFloat32(h))).toEqual(Array.from(h, (b) => Math.fround(float16BitsToNumber(b))))
    const b = float32ToBfloat16(xs)
    expect(Array.from(bfloat16ToFloat32(b))).toEqual(Array.from(b, bfloat16BitsToNumber))
    expect(Array.from(toFloat32(fromNumbers([1.5, -2, 0.25], "BF16", [3])))).toEqual([1.5, -2, 0.25])
    expect(Array.from(toFloat32(fromNumbers([1.5, -2, 0.25], "F16", [3])))).toEqual([1.5, -2, 0.25])
  })
  it("bfloat16 matches PyTorch rounding on known values", () => {
    // torch.tensor([...], dtype=torch.float32).to(torch.bfloat16).view(torch.int16)
    const cases: Array<[number, number]> = [
      [1, 0x3f80], [Math.PI, 0x4049], [0.1, 0x3dcd], [-2.5, 0xc020], [1 + 2 ** -8, 0x3f80], [1 + 3 * 2 ** -8, 0x3f82], [3.4e38, 0x7f80],
    ]
    for (const [x, bits] of cases) expect([x, numberToBfloat16Bits(x)]).toEqual([x, bits])
    for (let b = 0; b < 0x10000; b += 7) {
      const x = bfloat16BitsToNumber(b)
      if (!Number.isNaN(x)) expect(numberToBfloat16Bits(x)).toBe(b)
    }
    expect(Number.isNaN(bfloat16BitsToNumber(numberToBfloat16Bits(NaN)))).toBe(true)
  })
})

describe("rounding a double once", () => {
  // Each value lies just off a half-way point of the target format, closer than float32 can
  // resolve: float32 rounds it onto the half-way point, and the second rounding then goes to even,
  // the wrong way. The float32 path's answer is checked too, so each case is known to discriminate.
  const cases: Array<[string, number, "F16" | "BF16", number, number]> = [
    ["just above 1 + half an fp16 ulp", 1 + 2 ** -11 + 2 ** -40, "F16", 0x3c01, 0x3c00],
    ["just below 1 + 1.5 fp16 ulps", 1 + 3 * 2 ** -11 - 2 ** -40, "F16", 0x3c01, 0x3c02],
    ["just above half the smallest fp16 subnormal", 2 ** -25 + 2 ** -60, "F16", 0x0001, 0x0000],
    ["negative, just beyond the tie 1024.5", -(1024.5 + 2 ** -30), "F16", 0xe401, 0xe400],
    ["just above 1 + half a bf16 ulp", 1 + 2 ** -8 + 2 ** -40, "BF16", 0x3f81, 0x3f80],
    ["just below 3 + 1.5 bf16 ulps", 3 + 3 * 2 ** -7 - 2 ** -40, "BF16", 0x4041, 0x4042],
  ]
  for (const [name, x, dtype, once, twice] of cases)
    it(`${dtype}: ${name}`, () => {
      const round = dtype === "F16" ? numberToFloat16Bits : numberToBfloat16Bits
      const viaFloat32 = dtype === "F16" ? float32ToFloat16(Float32Array.of(x))[0] : float32ToBfloat16(Float32Array.of(x))[0]
      expect(viaFloat32).toBe(twice)
      expect(round(x)).toBe(once)
      expect(new Uint16Array(fromNumbers([x], dtype, [1]).data.buffer)[0]).toBe(once)
    })

  it("F16: the nearest of the neighbouring codes, ties to even, on 20000 random doubles over the whole range", () => {
    // An oracle independent of the rounding code: decode the chosen code and its neighbours exactly
    // and compare distances in float64 (exact: the values are within a factor 2 of each other).
    let state = 12345
    const next = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0), state / 2 ** 32)
    for (let i = 0; i < 20000; i++) {
      const x = (next() < 0.5 ? -1 : 1) * 2 ** (next() * 44 - 28) * (1 + next())
      const h = numberToFloat16Bits(x)
      const v = float16BitsToNumber(h)
      if (!Number.isFinite(v)) {
        expect(Math.abs(x)).toBeGreaterThanOrEqual(65520)
        continue
      }
      const d = Math.abs(x - v)
      for (const n of [h - 1, h + 1]) {
        if ((n & 0x7fff) > 0x7bff || (n & 0x8000) !== (h & 0x8000)) continue
        const dn = Math.abs(x - float16BitsToNumber(n))
        expect(d <= dn).toBe(true)
        if (d === dn) expect(h % 2).toBe(0)
      }
    }
  })
})

describe("FP8", () => {
  it("E4M3FN decodes every special case as hand-computed from the bit layout (bias 7, no infinities)", () => {
    const cases: Array<[number, number]> = [
      [0x00, 0], [0x80, -0], // zeros
      [0x01, 2 ** -9], [0x07, 7 * 2 ** -9], [0x87, -7 * 2 ** -9], // subnormals: m/8 * 2^-6
      [0x08, 2 ** -6], // smallest normal
      [0x38, 1], [0x40, 2], [0x3c, 1.5], [0xb9, -1.125],
      [0x78, 256], [0x7e, 448], [0xfe, -448], // exponent 1111 is a normal binade: no infinity
    ]
    for (const [b, x] of cases) expect([b, float8E4M3Values[b]]).toEqual([b, x])
    expect(Object.is(float8E4M3Values[0x80], -0)).toBe(true)
    expect(Number.isNaN(float8E4M3Values[0x7f]) && Number.isNaN(float8E4M3Values[0xff])).toBe(true)
    expect(Array.from(float8E4M3Values).filter(Number.isNaN)).toHaveLength(2)
    expect(Array.from(float8E4M3Values).some((v) => !Number.isFinite(v) && !Number.isNaN(v))).toBe(false)
  })

  it("E5M2 decodes infinities, NaNs and subnormals as hand-computed (bias 15)", () => {
    const cases: Array<[number, number]> = [
      [0x00, 0], [0x01, 2 ** -16], [0x03, 3 * 2 ** -16], [0x83, -3 * 2 ** -16], // subnormals: m/4 * 2^-14
      [0x04, 2 ** -14], [0x3c, 1], [0x3d, 1.25], [0xc0, -2], [0x7b, 57344], // normals, largest finite
      [0x7c, Infinity], [0xfc, -Infinity],
    ]
    for (const [b, x] of cases) expect([b, float8E5M2Values[b]]).toEqual([b, x])
    for (const b of [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff]) expect(Number.isNaN(float8E5M2Values[b])).toBe(true)
    expect(Array.from(float8E5M2Values).filter(Number.isNaN)).toHaveLength(6)
  })

  it("files with F8_E4M3 / F8_E5M2 tensors have readable headers and decode through toFloat64 / toFloat32", () => {
    const bytes = handBuilt(
      {
        "w.weight": { dtype: "F8_E4M3", shape: [2, 2], data_offsets: [0, 4] },
        "w.weight_scale_inv": { dtype: "F32", shape: [1, 1], data_offsets: [4, 8] },
        "x": { dtype: "F8_E5M2", shape: [3], data_offsets: [8, 11] },
      },
      new Uint8Array([0x38, 0x40, 0xb9, 0x7e, ...le([0.5], Float32Array), 0x3c, 0x7c, 0x01]),
    )
    const dir = tmp()
    fs.writeFileSync(path.join(dir, "fp8.safetensors"), bytes)
    const header = Effect.runSync(readHeader(path.join(dir, "fp8.safetensors")))
    expect(header.tensors.get("w.weight")).toMatchObject({ dtype: "F8_E4M3", shape: [2, 2], byteLength: 4 })
    const contents = Effect.runSync(decode(bytes))
    expect(Array.from(toFloat64(contents.tensors.get("w.weight")!))).toEqual([1, 2, -1.125, 448])
    expect(Array.from(toFloat32(contents.tensors.get("x")!))).toEqual([1, Infinity, 2 ** -16])
  })
})
