// Element types the graph IR knows, with their ONNX TensorProto.DataType codes and sizes.
export type DType = "float32" | "float64" | "float16" | "bfloat16" | "int64" | "int32" | "int8" | "uint8" | "bool"

export const onnxDataType: Record<DType, number> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
  bfloat16: 16,
}

export const dtypeBytes: Record<DType, number> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  int8: 1,
  uint8: 1,
  bool: 1,
}

export const isFloat = (d: DType): boolean => d === "float32" || d === "float64" || d === "float16" || d === "bfloat16"

export const dtypeFromOnnx = (code: number): DType => {
  for (const [k, v] of Object.entries(onnxDataType)) if (v === code) return k as DType
  throw new Error(`unsupported ONNX data type code ${code}`)
}

/** Typed array that holds host data for a dtype (float16/bfloat16 are passed as raw uint16 bits). */
export type HostArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Uint16Array
