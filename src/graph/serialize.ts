// Serialization of the graph IR to an ONNX ModelProto with onnx-proto (protobufjs).
// Initializers are written inline (raw_data) or as external data references, so the
// protobuf holds only the graph structure and small tensors (never the 2 GB limit).
import onnxProto from "onnx-proto"
import { onnxDataType } from "./dtype.ts"
import type { AttrValue, GraphIR, Shape, Value } from "./ir.ts"

const { onnx } = onnxProto

/** Inline initializer bytes allowed in one model; leaves headroom under protobuf's 2 GiB. */
const INLINE_LIMIT = 1.75 * 2 ** 30

/** The one ONNX opset every graph is written against (23: RMSNormalization; onnxruntime 1.30 CPU supports it). */
export const OPSET = 23
/** IR version 11 is the one that goes with opset 23 (ONNX 1.18). */
export const IR_VERSION = 11

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)

const typeProto = (dtype: Value["dtype"], shape: Shape): onnxProto.onnx.ITypeProto => ({
  tensorType: {
    elemType: onnxDataType[dtype],
    shape: { dim: shape.map((d) => (typeof d === "number" ? { dimValue: d } : typeof d === "string" ? { dimParam: d } : {})) },
  },
})

const valueInfo = (v: Value): onnxProto.onnx.IValueInfoProto => ({ name: v.name, type: typeProto(v.dtype, v.shape) })

const attrProto = (name: string, a: AttrValue): onnxProto.onnx.IAttributeProto => {
  const T = onnx.AttributeProto.AttributeType
  switch (a.kind) {
    case "int":
      return { name, type: T.INT, i: a.v }
    case "float":
      return { name, type: T.FLOAT, f: a.v }
    case "string":
      return { name, type: T.STRING, s: new TextEncoder().encode(a.v) }
    case "ints":
      return { name, type: T.INTS, ints: [...a.v] }
    case "floats":
      return { name, type: T.FLOATS, floats: [...a.v] }
    case "tensor":
      return { name, type: T.TENSOR, t: { dims: [...a.shape], dataType: onnxDataType[a.dtype], rawData: bytesOf(a.data) } }
    case "graph":
      return { name, type: T.GRAPH, g: graphProto(a.v) }
  }
}

const graphProto = (g: GraphIR): onnxProto.onnx.IGraphProto => ({
  name: g.name,
  input: g.inputs.map(valueInfo),
  output: g.outputs.map(valueInfo),
  initializer: g.initializers.map(({ value, source }) => {
    const base = { name: value.name, dims: value.shape as number[], dataType: onnxDataType[value.dtype] }
    if (source.kind === "inline") return { ...base, rawData: bytesOf(source.data) }
    return {
      ...base,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: "location", value: source.location },
        { key: "offset", value: String(source.offset) },
        { key: "length", value: String(source.length) },
      ],
    }
  }),
  node: g.nodes.map((n, i) => ({
    name: `${n.op}_${i}_${n.outputs[0]?.name ?? ""}`,
    opType: n.op,
    domain: n.domain,
    input: n.inputs.map((v) => (v === null ? "" : v.name)),
    output: n.outputs.map((v) => v.name),
    attribute: Object.entries(n.attrs).map(([k, a]) => attrProto(k, a)),
  })),
})

/** The model as ONNX protobuf bytes. */
export const serialize = (g: GraphIR, opts: { producer?: string } = {}): Uint8Array => {
  if (g.parent) throw new Error(`serialize: graph ${g.name} is a subgraph; serialize the top-level graph`)
  if (g.outputs.length === 0) throw new Error(`serialize: graph ${g.name} has no outputs`)
  const inline = g.initializers.reduce((n, i) => n + (i.source.kind === "inline" ? i.source.data.byteLength : 0), 0)
  if (inline > INLINE_LIMIT)
    throw new Error(`serialize: ${(inline / 2 ** 30).toFixed(2)} GiB of inline initializers exceed protobuf's 2 GiB message limit; declare large weights as external data (externalSource)`)
  const model = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: opts.producer ?? "pipe",
    opsetImport: [{ domain: "", version: OPSET }],
    graph: graphProto(g),
  })
  return onnx.ModelProto.encode(model).finish()
}
