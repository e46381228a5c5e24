// Host tensor helpers: build ort.Tensors from numbers/typed arrays and read them back.
import * as ort from "onnxruntime-node"
import type { DType } from "../graph/dtype.ts"

export type Tensor = ort.Tensor

const sizeOf = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1)

/** A tensor of `dtype` and `dims` from numbers (or a typed array of the matching kind). */
export const tensor = (dtype: Exclude<DType, "bfloat16">, dims: readonly number[], values: readonly number[] | ArrayLike<number> | BigInt64Array): ort.Tensor => {
  const n = sizeOf(dims)
  if (values.length !== n) throw new Error(`tensor: ${values.length} values for shape ${JSON.stringify(dims)} (${n} elements)`)
  switch (dtype) {
    case "float32":
      return new ort.Tensor("float32", values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>), dims)
    case "float64":
      return new ort.Tensor("float64", values instanceof Float64Array ? values : Float64Array.from(values as ArrayLike<number>), dims)
    case "int64":
      return new ort.Tensor("int64", values instanceof BigInt64Array ? values : BigInt64Array.from(Array.from(values as ArrayLike<number>, (v) => BigInt(v))), dims)
    case "int32":
      return new ort.Tensor("int32", Int32Array.from(values as ArrayLike<number>), dims)
    case "int8":
      return new ort.Tensor("int8", Int8Array.from(values as ArrayLike<number>), dims)
    case "uint8":
      return new ort.Tensor("uint8", Uint8Array.from(values as ArrayLike<number>), dims)
    case "bool":
      return new ort.Tensor("bool", Uint8Array.from(values as ArrayLike<number>), dims)
    case "float16":
      return new ort.Tensor("float16", Uint16Array.from(values as ArrayLike<number>), dims)
  }
}

export const scalar = (dtype: "float32" | "float64" | "int64", v: number): ort.Tensor => tensor(dtype, [], [v])

/** The tensor's values as plain numbers (int64 converted with Number). */
export const toNumbers = (t: ort.Tensor): number[] => {
  const d = t.data
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return Array.from(d, (v) => Number(v))
  return Array.from(d as ArrayLike<number>)
}

export const toFloat32 = (t: ort.Tensor): Float32Array => {
  if (t.type !== "float32") throw new Error(`expected a float32 tensor, got ${t.type}`)
  return t.data as Float32Array
}
