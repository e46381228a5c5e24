// The graph builder: a typed DSL over ONNX. Each op method checks its inputs, infers the
// output dtype and shape, appends one node and returns the output value(s).
import { type DType, dtypeBytes, type HostArray, isFloat, onnxDataType } from "./dtype.ts"
import { type AttrValue, type CustomGradient, type Dim, type GraphIR, type Initializer, type Node, type Shape, type TensorSource, Value } from "./ir.ts"
import { broadcastShapes, matMulShape, normAxis, reshapeShape, ShapeError, staticSize } from "./shape.ts"

/** One counter per model so every value name is unique across a graph and its subgraphs. */
interface NameCounter {
  next: number
  readonly used: Set<string>
  /** names made up by the builder (not chosen by the user), which outputAs may replace */
  readonly generated: Set<string>
}

export type AttrInput = number | string | readonly number[] | AttrValue | GraphIR

export interface OutputSpec {
  readonly dtype: DType
  readonly shape: Shape
}

const hostArrayFor = (dtype: DType, values: readonly number[]): HostArray => {
  switch (dtype) {
    case "float32":
      return Float32Array.from(values)
    case "float64":
      return Float64Array.from(values)
    case "int64":
      return BigInt64Array.from(values.map((v) => BigInt(v)))
    case "int32":
      return Int32Array.from(values)
    case "int8":
      return Int8Array.from(values)
    case "uint8":
    case "bool":
      return Uint8Array.from(values)
    default:
      throw new Error(`constants of dtype ${dtype} must be given as raw bits, not numbers`)
  }
}

export class Graph implements GraphIR {
  readonly inputs: Value[] = []
  readonly outputs: Value[] = []
  readonly initializers: Initializer[] = []
  readonly nodes: Node[] = []
  private readonly names: NameCounter

  constructor(
    readonly name: string = "main",
    readonly parent: Graph | undefined = undefined,
  ) {
    this.names = parent ? parent.names : { next: 0, used: new Set(), generated: new Set() }
  }

  // ---------------------------------------------------------------- declarations

  private claim(name: string): string {
    if (this.names.used.has(name)) throw new Error(`graph ${this.name}: the name "${name}" is already used`)
    this.names.used.add(name)
    return name
  }

  /** An unused name starting with `hint` (not yet claimed: pass it to `input`). */
  uniqueName(hint: string): string {
    let name: string
    do name = `${hint}_${this.names.next++}`
    while (this.names.used.has(name))
    return name
  }

  private fresh(hint: string): string {
    const name = this.claim(this.uniqueName(hint))
    this.names.generated.add(name)
    return name
  }

  input(name: string, dtype: DType, shape: Shape): Value {
    const v = new Value(this.claim(name), dtype, shape, this, undefined)
    this.inputs.push(v)
    return v
  }

  /** A weight stored in the model (inline bytes) or in another file at an offset (external). */
  initializer(name: string, dtype: DType, shape: readonly number[], source: TensorSource): Value {
    const bytes = (staticSize(shape) ?? 0) * dtypeBytes[dtype]
    const have = source.kind === "inline" ? source.data.byteLength : source.length
    if (have !== bytes) throw new Error(`initializer ${name}: ${dtype}${JSON.stringify(shape)} needs ${bytes} bytes, the source has ${have}`)
    if (this.parent) throw new Error(`initializer ${name}: declare initializers on the top-level graph`)
    const v = new Value(this.claim(name), dtype, shape, this, undefined)
    this.initializers.push({ value: v, source })
    return v
  }

  /** Marks values as graph outputs, optionally renaming them (through Identity) to `names`. */
  output(...values: Value[]): void {
    for (const v of values) this.outputs.push(v)
  }

  /** Output `v` under the given name: a node output of this graph with a generated name is
   * renamed in place; anything else (inputs, named values, outer values) goes through Identity. */
  outputAs(name: string, v: Value): Value {
    if (v.graph === this && v.producer && this.names.generated.has(v.name) && !this.outputs.includes(v)) {
      this.claim(name)
      this.names.generated.delete(v.name)
      this.names.used.delete(v.name)
      v.name = name
      this.outputs.push(v)
      return v
    }
    const out = this.node("Identity", [v], {}, [{ dtype: v.dtype, shape: v.shape }], name)[0]
    this.outputs.push(out)
    return out
  }

  /** Appends one node with explicit output types: the escape hatch for ops without a method.
   * `outputName` names the (first) output exactly. */
  node(op: string, inputs: readonly (Value | null)[], attrs: Record<string, AttrInput>, outputs: readonly OutputSpec[], outputName?: string, options: { domain?: string; customGradient?: CustomGradient } = {}): Value[] {
    for (const i of inputs) if (i !== null) this.checkVisible(op, i)
    const outs: Value[] = []
    const attrValues: Record<string, AttrValue> = {}
    for (const [k, v] of Object.entries(attrs)) attrValues[k] = toAttr(v)
    const node: Node = { op, domain: options.domain ?? "", inputs, outputs: outs, attrs: attrValues, ...(options.customGradient ? { customGradient: options.customGradient } : {}) }
    outputs.forEach((o, i) => {
      const name = i === 0 && outputName !== undefined ? this.claim(outputName) : this.fresh(op.toLowerCase())
      outs.push(new Value(name, o.dtype, o.shape, this, node))
    })
    this.nodes.push(node)
    return outs
  }

  private checkVisible(op: string, v: Value): void {
    for (let g: GraphIR | undefined = this; g; g = g.parent) if (g === v.graph) return
    throw new Error(`${op}: input ${v.name} belongs to graph ${v.graph.name}, which does not enclose graph ${this.name}`)
  }

  private one(op: string, inputs: readonly (Value | null)[], attrs: Record<string, AttrInput>, dtype: DType, shape: Shape): Value {
    return this.node(op, inputs, attrs, [{ dtype, shape }])[0]
  }

  // ---------------------------------------------------------------- constants

  /** A constant tensor (Constant node). */
  constant(dtype: DType, shape: readonly number[], values: readonly number[] | HostArray): Value {
    const data = Array.isArray(values) ? hostArrayFor(dtype, values as number[]) : (values as HostArray)
    return this.one("Constant", [], { value: { kind: "tensor", dtype, shape, data } }, dtype, shape)
  }

  scalar(v: number, dtype: DType = "float32"): Value {
    return this.constant(dtype, [], [v])
  }

  /** A 1-D int64 constant (axes, shapes, indices). */
  ints(values: readonly number[]): Value {
    return this.constant("int64", [values.length], values)
  }

  /** A scalar constant with the dtype of `like`. */
  scalarLike(v: number, like: Value): Value {
    return this.scalar(v, like.dtype)
  }

  // ---------------------------------------------------------------- elementwise

  private binary(op: string, a: Value, b: Value, outDtype?: DType): Value {
    if (a.dtype !== b.dtype) throw new ShapeError(op, `dtypes differ: ${a.dtype} vs ${b.dtype}`, [a.shape, b.shape])
    return this.one(op, [a, b], {}, outDtype ?? a.dtype, broadcastShapes(op, [a.shape, b.shape]))
  }
  add(a: Value, b: Value): Value {
    return this.binary("Add", a, b)
  }
  sub(a: Value, b: Value): Value {
    return this.binary("Sub", a, b)
  }
  mul(a: Value, b: Value): Value {
    return this.binary("Mul", a, b)
  }
  div(a: Value, b: Value): Value {
    return this.binary("Div", a, b)
  }
  pow(a: Value, b: Value): Value {
    return this.binary("Pow", a, b)
  }
  max(a: Value, b: Value): Value {
    return this.binary("Max", a, b)
  }
  min(a: Value, b: Value): Value {
    return this.binary("Min", a, b)
  }
  equal(a: Value, b: Value): Value {
    return this.binary("Equal", a, b, "bool")
  }
  less(a: Value, b: Value): Value {
    return this.binary("Less", a, b, "bool")
  }
  lessOrEqual(a: Value, b: Value): Value {
    return this.binary("LessOrEqual", a, b, "bool")
  }
  greater(a: Value, b: Value): Value {
    return this.binary("Greater", a, b, "bool")
  }
  greaterOrEqual(a: Value, b: Value): Value {
    return this.binary("GreaterOrEqual", a, b, "bool")
  }
  and(a: Value, b: Value): Value {
    return this.binary("And", a, b, "bool")
  }
  or(a: Value, b: Value): Value {
    return this.binary("Or", a, b, "bool")
  }
  where(cond: Value, a: Value, b: Value): Value {
    if (cond.dtype !== "bool") throw new ShapeError("Where", `condition must be bool, got ${cond.dtype}`, [cond.shape])
    if (a.dtype !== b.dtype) throw new ShapeError("Where", `dtypes differ: ${a.dtype} vs ${b.dtype}`, [a.shape, b.shape])
    return this.one("Where", [cond, a, b], {}, a.dtype, broadcastShapes("Where", [cond.shape, a.shape, b.shape]))
  }

  private unary(op: string, x: Value, floatOnly = true): Value {
    if (floatOnly && !isFloat(x.dtype)) throw new ShapeError(op, `needs a float input, got ${x.dtype}`, [x.shape])
    return this.one(op, [x], {}, x.dtype, x.shape)
  }
  neg(x: Value): Value {
    return this.unary("Neg", x, false)
  }
  abs(x: Value): Value {
    return this.unary("Abs", x, false)
  }
  exp(x: Value): Value {
    return this.unary("Exp", x)
  }
  log(x: Value): Value {
    return this.unary("Log", x)
  }
  sqrt(x: Value): Value {
    return this.unary("Sqrt", x)
  }
  reciprocal(x: Value): Value {
    return this.unary("Reciprocal", x)
  }
  tanh(x: Value): Value {
    return this.unary("Tanh", x)
  }
  sigmoid(x: Value): Value {
    return this.unary("Sigmoid", x)
  }
  erf(x: Value): Value {
    return this.unary("Erf", x)
  }
  relu(x: Value): Value {
    return this.unary("Relu", x)
  }
  cos(x: Value): Value {
    return this.unary("Cos", x)
  }
  sin(x: Value): Value {
    return this.unary("Sin", x)
  }
  sign(x: Value): Value {
    return this.unary("Sign", x, false)
  }
  not(x: Value): Value {
    if (x.dtype !== "bool") throw new ShapeError("Not", `needs bool, got ${x.dtype}`, [x.shape])
    return this.one("Not", [x], {}, "bool", x.shape)
  }
  identity(x: Value): Value {
    return this.unary("Identity", x, false)
  }
  cast(x: Value, to: DType): Value {
    return this.one("Cast", [x], { to: onnxTypeAttr(to) }, to, x.shape)
  }
  /** Stops gradients: the value is treated as a constant by autodiff. */
  stopGradient(x: Value): Value {
    return this.node("Identity", [x], {}, [{ dtype: x.dtype, shape: x.shape }], undefined, { customGradient: { wrt: [], rule: () => [] } })[0]
  }

  // ---------------------------------------------------------------- linear algebra

  matMul(a: Value, b: Value): Value {
    if (a.dtype !== b.dtype) throw new ShapeError("MatMul", `dtypes differ: ${a.dtype} vs ${b.dtype}`, [a.shape, b.shape])
    return this.one("MatMul", [a, b], {}, a.dtype, matMulShape("MatMul", a.shape, b.shape))
  }

  /** alpha * A' B' + beta * C with A', B' optionally transposed; A and B are 2-D. */
  gemm(a: Value, b: Value, c: Value | null, opts: { transA?: boolean; transB?: boolean; alpha?: number; beta?: number } = {}): Value {
    if (a.rank !== 2 || b.rank !== 2) throw new ShapeError("Gemm", "A and B must be 2-D", [a.shape, b.shape])
    const m = opts.transA ? a.shape[1] : a.shape[0]
    const ka = opts.transA ? a.shape[0] : a.shape[1]
    const kb = opts.transB ? b.shape[1] : b.shape[0]
    const n = opts.transB ? b.shape[0] : b.shape[1]
    if (typeof ka === "number" && typeof kb === "number" && ka !== kb) throw new ShapeError("Gemm", `inner dims ${ka} and ${kb} differ`, [a.shape, b.shape])
    const out: Shape = [m, n]
    if (c) broadcastShapes("Gemm", [out, c.shape])
    const attrs: Record<string, AttrInput> = { transA: opts.transA ? 1 : 0, transB: opts.transB ? 1 : 0, alpha: { kind: "float", v: opts.alpha ?? 1 }, beta: { kind: "float", v: opts.beta ?? 1 } }
    return this.one("Gemm", c ? [a, b, c] : [a, b], attrs, a.dtype, out)
  }

  /**
   * A Hugging Face Linear layer: x [..., in] times weight [out, in] transposed, plus bias
   * [out]. 2-D inputs use one Gemm(transB); higher ranks use MatMul(x, Transpose(weight)),
   * which onnxruntime fuses into one FusedMatMul (or folds, for a constant weight).
   * (Flattening to 2-D and reshaping back with a run-time shape would trip onnxruntime
   * 1.30's ReshapeFusion when another Reshape follows, e.g. when splitting heads.)
   */
  linear(x: Value, weight: Value, bias: Value | null = null): Value {
    if (weight.rank !== 2) throw new ShapeError("linear", "weight must be [out, in]", [x.shape, weight.shape])
    const inDim = weight.shape[1]
    const xIn = x.shape[x.rank - 1]
    if (typeof inDim === "number" && typeof xIn === "number" && xIn !== inDim) throw new ShapeError("linear", `input features ${xIn} differ from weight's ${inDim}`, [x.shape, weight.shape])
    if (x.rank === 2) return this.gemm(x, weight, bias, { transB: true })
    const y = this.matMul(x, this.transpose(weight, [1, 0]))
    return bias ? this.add(y, bias) : y
  }

  // ---------------------------------------------------------------- normalization / softmax

  softmax(x: Value, axis = -1): Value {
    normAxis("Softmax", axis, x.rank, [x.shape])
    return this.one("Softmax", [x], { axis }, x.dtype, x.shape)
  }
  logSoftmax(x: Value, axis = -1): Value {
    normAxis("LogSoftmax", axis, x.rank, [x.shape])
    return this.one("LogSoftmax", [x], { axis }, x.dtype, x.shape)
  }

  /** LayerNormalization over the trailing axes from `axis` (scale and bias broadcast over them). */
  layerNorm(x: Value, scale: Value, bias: Value | null, opts: { axis?: number; epsilon?: number } = {}): Value {
    const axis = opts.axis ?? -1
    normAxis("LayerNormalization", axis, x.rank, [x.shape])
    return this.one("LayerNormalization", bias ? [x, scale, bias] : [x, scale], { axis, epsilon: { kind: "float", v: opts.epsilon ?? 1e-5 } }, x.dtype, x.shape)
  }

  /** RMSNormalization (opset 23): x / sqrt(mean(x^2 over axes >= axis) + eps) * scale. */
  rmsNorm(x: Value, scale: Value, opts: { axis?: number; epsilon?: number } = {}): Value {
    const axis = opts.axis ?? -1
    normAxis("RMSNormalization", axis, x.rank, [x.shape])
    return this.one("RMSNormalization", [x, scale], { axis, epsilon: { kind: "float", v: opts.epsilon ?? 1e-5 } }, x.dtype, x.shape)
  }

  // ---------------------------------------------------------------- reductions

  private reduce(op: string, x: Value, axes: readonly number[] | undefined, keepdims: boolean): Value {
    const all = axes === undefined
    const norm = (axes ?? x.shape.map((_, i) => i)).map((a) => normAxis(op, a, x.rank, [x.shape]))
    const shape: Dim[] = []
    x.shape.forEach((d, i) => {
      if (!norm.includes(i)) shape.push(d)
      else if (keepdims) shape.push(1)
    })
    const inputs = all ? [x] : [x, this.ints(norm)]
    return this.one(op, inputs, { keepdims: keepdims ? 1 : 0 }, x.dtype, shape)
  }
  /** Sum over `axes` (all axes when omitted). */
  reduceSum(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.reduce("ReduceSum", x, axes, keepdims)
  }
  reduceMean(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.reduce("ReduceMean", x, axes, keepdims)
  }
  reduceMax(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.reduce("ReduceMax", x, axes, keepdims)
  }
  /** For log-probabilities prefer logSoftmax: onnxruntime's CPU ReduceLogSumExp is not vectorized
   * and about 10x slower than its LogSoftmax over the same rows (losses.ts). */
  reduceLogSumExp(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.reduce("ReduceLogSumExp", x, axes, keepdims)
  }
  /** ReduceSum over axes given at run time (int64 1-D); empty axes reduce nothing. Rank is kept. */
  reduceSumDynamic(x: Value, axes: Value, shape: Shape): Value {
    return this.one("ReduceSum", [x, axes], { keepdims: 1, noop_with_empty_axes: 1 }, x.dtype, shape)
  }
  argMax(x: Value, axis = -1, keepdims = false): Value {
    const a = normAxis("ArgMax", axis, x.rank, [x.shape])
    const shape = x.shape.flatMap((d, i) => (i === a ? (keepdims ? [1] : []) : [d]))
    return this.one("ArgMax", [x], { axis: a, keepdims: keepdims ? 1 : 0 }, "int64", shape)
  }
  /** Cumulative sum along `axis`. */
  cumSum(x: Value, axis: number, opts: { exclusive?: boolean; reverse?: boolean } = {}): Value {
    normAxis("CumSum", axis, x.rank, [x.shape])
    return this.one("CumSum", [x, this.constant("int64", [], [axis])], { exclusive: opts.exclusive ? 1 : 0, reverse: opts.reverse ? 1 : 0 }, x.dtype, x.shape)
  }
  /** The k largest (or smallest) entries along `axis`: [values, int64 indices]. */
  topK(x: Value, k: number, axis = -1, largest = true): [Value, Value] {
    const a = normAxis("TopK", axis, x.rank, [x.shape])
    const shape = x.shape.map((d, i) => (i === a ? k : d))
    const [v, i] = this.node("TopK", [x, this.ints([k])], { axis: a, largest: largest ? 1 : 0, sorted: 1 }, [
      { dtype: x.dtype, shape },
      { dtype: "int64", shape },
    ])
    return [v, i]
  }

  // ---------------------------------------------------------------- shape ops

  /** Reshape to a fixed target (0 copies the input dim, -1 is inferred) or to a run-time shape. */
  reshape(x: Value, target: readonly number[] | Value): Value {
    if (Array.isArray(target)) {
      const t = target as readonly number[]
      return this.one("Reshape", [x, this.ints(t)], {}, x.dtype, reshapeShape("Reshape", x.shape, t))
    }
    const tv = target as Value
    const len = tv.shape[0]
    if (tv.rank !== 1 || typeof len !== "number") throw new ShapeError("Reshape", "a run-time target shape must be 1-D with a fixed length", [x.shape, tv.shape])
    return this.one("Reshape", [x, tv], {}, x.dtype, new Array<Dim>(len).fill(null))
  }
  /** Reshape `x` to the run-time shape of `like` (the result has like's static shape). */
  reshapeLike(x: Value, like: Value): Value {
    return this.one("Reshape", [x, this.shapeOf(like)], {}, x.dtype, like.shape)
  }
  shapeOf(x: Value, start?: number, end?: number): Value {
    const s = start ?? 0
    const e = end ?? x.rank
    const attrs: Record<string, AttrInput> = {}
    if (start !== undefined) attrs.start = start
    if (end !== undefined) attrs.end = end
    const len = (e < 0 ? e + x.rank : e) - (s < 0 ? s + x.rank : s)
    return this.one("Shape", [x], attrs, "int64", [len])
  }
  transpose(x: Value, perm?: readonly number[]): Value {
    const p = perm ?? x.shape.map((_, i) => x.rank - 1 - i)
    if (p.length !== x.rank || [...p].sort((a, b) => a - b).some((v, i) => v !== i)) throw new ShapeError("Transpose", `perm ${JSON.stringify(p)} is not a permutation of ${x.rank} axes`, [x.shape])
    return this.one("Transpose", [x], { perm: p }, x.dtype, p.map((i) => x.shape[i]))
  }
  squeeze(x: Value, axes: readonly number[]): Value {
    const norm = axes.map((a) => normAxis("Squeeze", a, x.rank, [x.shape]))
    for (const a of norm) {
      const d = x.shape[a]
      if (typeof d === "number" && d !== 1) throw new ShapeError("Squeeze", `axis ${a} has size ${d}, not 1`, [x.shape])
    }
    return this.one("Squeeze", [x, this.ints(norm)], {}, x.dtype, x.shape.filter((_, i) => !norm.includes(i)))
  }
  unsqueeze(x: Value, axes: readonly number[]): Value {
    const rank = x.rank + axes.length
    const norm = axes.map((a) => normAxis("Unsqueeze", a, rank, [x.shape]))
    const out: Dim[] = []
    let j = 0
    for (let i = 0; i < rank; i++) out.push(norm.includes(i) ? 1 : x.shape[j++])
    return this.one("Unsqueeze", [x, this.ints(norm)], {}, x.dtype, out)
  }
  concat(xs: readonly Value[], axis: number): Value {
    if (xs.length === 0) throw new Error("Concat: no inputs")
    const rank = xs[0].rank
    const a = normAxis("Concat", axis, rank, xs.map((x) => x.shape))
    let total: Dim = 0
    const out: Dim[] = [...xs[0].shape]
    for (const x of xs) {
      if (x.rank !== rank || x.dtype !== xs[0].dtype) throw new ShapeError("Concat", "inputs differ in rank or dtype", xs.map((v) => v.shape))
      x.shape.forEach((d, i) => {
        if (i !== a && typeof d === "number" && typeof out[i] === "number" && d !== out[i]) throw new ShapeError("Concat", `dim ${i} differs`, xs.map((v) => v.shape))
      })
      const d = x.shape[a]
      total = typeof total === "number" && typeof d === "number" ? total + d : null
    }
    out[a] = total
    return this.one("Concat", xs, { axis: a }, xs[0].dtype, out)
  }
  split(x: Value, sizes: readonly number[], axis: number): Value[] {
    const a = normAxis("Split", axis, x.rank, [x.shape])
    const d = x.shape[a]
    const sum = sizes.reduce((s, v) => s + v, 0)
    if (typeof d === "number" && d !== sum) throw new ShapeError("Split", `sizes ${JSON.stringify(sizes)} do not add up to ${d}`, [x.shape])
    return this.node(
      "Split",
      [x, this.ints(sizes)],
      { axis: a },
      sizes.map((s) => ({ dtype: x.dtype, shape: x.shape.map((dd, i) => (i === a ? s : dd)) })),
    )
  }
  /** Slice with fixed starts/ends (clamped as in ONNX) or run-time int64 starts/ends. */
  slice(x: Value, starts: readonly number[] | Value, ends: readonly number[] | Value, axes: readonly number[], steps?: readonly number[]): Value {
    const norm = axes.map((a) => normAxis("Slice", a, x.rank, [x.shape]))
    const out: Dim[] = [...x.shape]
    norm.forEach((a, k) => {
      const step = steps?.[k] ?? 1
      const d = x.shape[a]
      if (!Array.isArray(starts) || !Array.isArray(ends) || typeof d !== "number") {
        out[a] = null
        return
      }
      const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi)
      const s0 = (starts as number[])[k]
      const e0 = (ends as number[])[k]
      if (step > 0) {
        const s = clamp(s0 < 0 ? s0 + d : s0, 0, d)
        const e = clamp(e0 < 0 ? e0 + d : e0, 0, d)
        out[a] = Math.max(0, Math.ceil((e - s) / step))
      } else {
        const s = clamp(s0 < 0 ? s0 + d : s0, -1, d - 1)
        const e = clamp(e0 < 0 ? e0 + d : e0, -1, d - 1)
        out[a] = Math.max(0, Math.ceil((e - s) / step))
      }
    })
    const sv = Array.isArray(starts) ? this.ints(starts as number[]) : (starts as Value)
    const ev = Array.isArray(ends) ? this.ints(ends as number[]) : (ends as Value)
    const inputs = [x, sv, ev, this.ints(norm)]
    if (steps) inputs.push(this.ints(steps))
    return this.one("Slice", inputs, {}, x.dtype, out)
  }
  gather(data: Value, indices: Value, axis = 0): Value {
    const a = normAxis("Gather", axis, data.rank, [data.shape, indices.shape])
    if (indices.dtype !== "int64" && indices.dtype !== "int32") throw new ShapeError("Gather", `indices must be int64/int32, got ${indices.dtype}`, [data.shape, indices.shape])
    return this.one("Gather", [data, indices], { axis: a }, data.dtype, [...data.shape.slice(0, a), ...indices.shape, ...data.shape.slice(a + 1)])
  }
  gatherElements(data: Value, indices: Value, axis: number): Value {
    const a = normAxis("GatherElements", axis, data.rank, [data.shape, indices.shape])
    if (indices.rank !== data.rank) throw new ShapeError("GatherElements", "indices must have the rank of data", [data.shape, indices.shape])
    return this.one("GatherElements", [data, indices], { axis: a }, data.dtype, indices.shape)
  }
  scatterElements(data: Value, indices: Value, updates: Value, axis: number, reduction: "none" | "add" = "none"): Value {
    const a = normAxis("ScatterElements", axis, data.rank, [data.shape, indices.shape, updates.shape])
    return this.one("ScatterElements", [data, indices, updates], { axis: a, reduction }, data.dtype, data.shape)
  }
  /** Broadcast `x` to a fixed shape, or to a run-time shape with the given static shape. */
  expand(x: Value, shape: readonly number[] | Value, staticShape?: Shape): Value {
    if (Array.isArray(shape)) {
      const s = shape as readonly number[]
      return this.one("Expand", [x, this.ints(s)], {}, x.dtype, broadcastShapes("Expand", [x.shape, s]))
    }
    const sv = shape as Value
    const out = staticShape ?? new Array<Dim>(sv.shape[0] as number).fill(null)
    return this.one("Expand", [x, sv], {}, x.dtype, broadcastShapes("Expand", [x.shape, out]))
  }
  /** A tensor of the run-time shape `shape` (int64 1-D) filled with `value`. */
  constantOfShape(shape: Value, value: number, dtype: DType, staticShape?: Shape): Value {
    const out = staticShape ?? new Array<Dim>(shape.shape[0] as number).fill(null)
    return this.one("ConstantOfShape", [shape], { value: { kind: "tensor", dtype, shape: [1], data: hostArrayFor(dtype, [value]) } }, dtype, out)
  }
  zerosLike(x: Value): Value {
    return this.constantOfShape(this.shapeOf(x), 0, x.dtype, x.shape)
  }
  /** start, start+delta, ... < limit (scalars of one dtype). */
  range(start: Value, limit: Value, delta: Value): Value {
    return this.one("Range", [start, limit, delta], {}, start.dtype, [null])
  }
  /** Number of elements (int64 scalar). */
  size(x: Value): Value {
    return this.one("Size", [x], {}, "int64", [])
  }
  /** Indices of the non-zero elements: int64 [rank, count]. */
  nonZero(x: Value): Value {
    return this.one("NonZero", [x], {}, "int64", [x.rank, null])
  }
  /** ScatterND: indices [..., k] address the first k axes of data; updates are written (or added). */
  scatterND(data: Value, indices: Value, updates: Value, reduction: "none" | "add" = "none"): Value {
    return this.one("ScatterND", [data, indices, updates], { reduction }, data.dtype, data.shape)
  }
  /** Lower (upper=false) or upper triangle of the last two axes, shifted by k. */
  trilu(x: Value, upper: boolean, k = 0): Value {
    return this.one("Trilu", [x, this.constant("int64", [], [k])], { upper: upper ? 1 : 0 }, x.dtype, x.shape)
  }
  /** Pads with run-time pads (int64 [2*rank]: all begins then all ends). */
  pad(x: Value, pads: Value, mode: "constant" | "edge" | "reflect" = "constant"): Value {
    return this.one("Pad", [x, pads], { mode }, x.dtype, x.shape.map(() => null))
  }

  // ---------------------------------------------------------------- control flow

  /** A subgraph for Loop/If bodies; it may read values of this graph (and its ancestors). */
  subgraph(name: string): Graph {
    return new Graph(this.uniqueName(name), this)
  }

  /**
   * ONNX Loop. `body(sub, iter, carried)` builds the body in a subgraph and returns
   * { cond, carried, scans }: the continue condition (bool scalar, or omitted for "always"),
   * the next loop-carried values (same dtypes as `initial`) and per-iteration scan outputs.
   * Returns the final carried values followed by the stacked scan outputs ([iters, ...]).
   */
  loop(
    maxTrips: Value | null,
    cond: Value | null,
    initial: readonly Value[],
    body: (sub: Graph, iter: Value, carried: Value[]) => { cond?: Value; carried: readonly Value[]; scans?: readonly Value[] },
  ): Value[] {
    const sub = this.subgraph("loop_body")
    const iter = sub.input(sub.uniqueName("iter"), "int64", [])
    const condIn = sub.input(sub.uniqueName("cond_in"), "bool", [])
    const carriedIn = initial.map((v) => sub.input(sub.uniqueName(`${v.name}_in`), v.dtype, v.shape.map(() => null)))
    const r = body(sub, iter, carriedIn)
    const condOut = r.cond ?? sub.identity(condIn)
    if (r.carried.length !== initial.length) throw new Error(`Loop: body returned ${r.carried.length} carried values, expected ${initial.length}`)
    r.carried.forEach((v, i) => {
      if (v.dtype !== initial[i].dtype) throw new Error(`Loop: carried value ${i} changes dtype ${initial[i].dtype} -> ${v.dtype}`)
    })
    // A body output must not be a body input or an outer value: route those through Identity.
    const own = (v: Value) => (v.graph === sub && v.producer ? v : sub.identity(v))
    sub.output(own(condOut), ...r.carried.map(own), ...(r.scans ?? []).map(own))
    const outs: OutputSpec[] = [
      ...r.carried.map((v, i) => ({ dtype: v.dtype, shape: sameOrUnknown(initial[i].shape, v.shape) })),
      ...(r.scans ?? []).map((v) => ({ dtype: v.dtype, shape: [null, ...v.shape] })),
    ]
    return this.node("Loop", [maxTrips, cond, ...initial], { body: sub }, outs)
  }

  /** ONNX If: both branches are built in subgraphs and must return matching dtypes. */
  if_(cond: Value, thenBranch: (sub: Graph) => readonly Value[], elseBranch: (sub: Graph) => readonly Value[]): Value[] {
    const mk = (name: string, f: (sub: Graph) => readonly Value[]) => {
      const sub = this.subgraph(name)
      const outs = f(sub).map((v) => (v.graph === sub && v.producer ? v : sub.identity(v)))
      sub.output(...outs)
      return { sub, outs }
    }
    const t = mk("then", thenBranch)
    const e = mk("else", elseBranch)
    if (t.outs.length !== e.outs.length || t.outs.some((v, i) => v.dtype !== e.outs[i].dtype)) throw new Error("If: branches return different numbers or dtypes of values")
    return this.node("If", [cond], { then_branch: t.sub, else_branch: e.sub }, t.outs.map((v, i) => ({ dtype: v.dtype, shape: sameOrUnknown(v.shape, e.outs[i].shape) })))
  }
}

const sameOrUnknown = (a: Shape, b: Shape): Shape => (a.length === b.length ? a.map((d, i) => (d === b[i] ? d : null)) : b.map(() => null))

const onnxTypeAttr = (d: DType): AttrValue => ({ kind: "int", v: onnxDataType[d] })

const toAttr = (v: AttrInput): AttrValue => {
  if (typeof v === "number") return Number.isInteger(v) ? { kind: "int", v } : { kind: "float", v }
  if (typeof v === "string") return { kind: "string", v }
  if (Array.isArray(v)) return (v as number[]).every(Number.isInteger) ? { kind: "ints", v: v as number[] } : { kind: "floats", v: v as number[] }
  if ("kind" in (v as object)) return v as AttrValue
  return { kind: "graph", v: v as GraphIR }
}
