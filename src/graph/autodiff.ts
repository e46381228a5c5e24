// Reverse-mode automatic differentiation over the graph IR. `gradients(g, loss, wrt)`
// appends the backward nodes to `g` and returns d loss / d wrt. Only nodes that lie on a
// path from a trainable value to the loss are differentiated; every rule is written with
// standard ONNX ops (the inference build of onnxruntime has no *Grad kernels).
import type { Graph } from "./builder.ts"
import { isFloat } from "./dtype.ts"
import type { GraphIR, Node, Value } from "./ir.ts"
import { ShapeError } from "./shape.ts"

export class GradientError extends Error {
  override readonly name = "GradientError"
}

/** A rule gets the node, the gradient of each output (null: none reaches the loss) and
 * which inputs need a gradient; it returns one gradient (or null) per input. */
type Rule = (g: Graph, node: Node, gy: readonly (Value | null)[], needs: readonly boolean[]) => readonly (Value | null)[]

/** The int64 numbers of a Constant-produced value (axes, shapes, perms), or undefined. */
export const constInts = (v: Value | null | undefined): number[] | undefined => {
  const p = v?.producer
  if (!p || p.op !== "Constant") return undefined
  const a = p.attrs.value
  if (a?.kind !== "tensor") return undefined
  return Array.from(a.data as ArrayLike<number | bigint>, (x) => Number(x))
}

const attrInt = (n: Node, name: string, dflt: number): number => {
  const a = n.attrs[name]
  return a?.kind === "int" ? a.v : dflt
}
const attrFloat = (n: Node, name: string, dflt: number): number => {
  const a = n.attrs[name]
  return a?.kind === "float" ? a.v : dflt
}
const attrInts = (n: Node, name: string): readonly number[] | undefined => {
  const a = n.attrs[name]
  return a?.kind === "ints" ? a.v : undefined
}

const inp = (n: Node, i: number): Value => {
  const v = n.inputs[i]
  if (!v) throw new GradientError(`${n.op}: missing input ${i}`)
  return v
}

/**
 * Sums `grad` down to the shape of `x` (the adjoint of numpy broadcasting). Axes are chosen
 * statically when the shapes decide them, otherwise at run time from the actual shapes.
 */
export const unbroadcast = (g: Graph, grad: Value, x: Value): Value => {
  const lead = grad.rank - x.rank
  if (lead < 0) throw new ShapeError("unbroadcast", "gradient has lower rank than its input", [grad.shape, x.shape])
  const axes: number[] = []
  for (let i = 0; i < lead; i++) axes.push(i)
  let dynamic = false
  x.shape.forEach((xd, i) => {
    const gd = grad.shape[i + lead]
    if (xd === 1) {
      if (gd !== 1) axes.push(i + lead)
    } else if (xd === null || xd !== gd) {
      // a fixed size > 1 must match at run time; a symbol only matches itself
      if (!(typeof xd === "number" && xd > 1)) dynamic = true
    }
  })
  let out = grad
  if (axes.length > 0) out = g.reduceSum(out, axes, true)
  if (dynamic) {
    // reduce the axes where x has size 1 and the gradient does not, decided at run time
    const xs = g.shapeOf(x)
    const gs = g.shapeOf(out, lead)
    const one = g.ints([1])
    const mask = g.and(g.equal(xs, one), g.not(g.equal(gs, one)))
    const found = g.reshape(g.nonZero(mask), [-1])
    const ax = g.add(found, g.constant("int64", [1], [lead]))
    out = g.reduceSumDynamic(out, ax, out.shape.map((d, i) => (i < lead ? 1 : x.shape[i - lead] === 1 ? 1 : d)))
  }
  if (lead > 0) out = g.squeeze(out, axes.slice(0, lead))
  if (dynamic || out.shape.some((d, i) => d !== x.shape[i])) out = x.shape.every((d) => typeof d === "number") ? g.reshape(out, x.shape as number[]) : g.reshapeLike(out, x)
  return out
}

/** Broadcasts a reduced gradient (reduced over `axes` of x, keepdims or not) back to x's shape. */
const expandBack = (g: Graph, gy: Value, x: Value, axes: readonly number[], keepdims: boolean): Value => {
  const k = keepdims ? gy : g.unsqueeze(gy, axes)
  return x.shape.every((d) => typeof d === "number") ? g.expand(k, x.shape as number[]) : g.expand(k, g.shapeOf(x), x.shape)
}

/** Static axes of a Reduce* node (all axes when the axes input is absent). */
const reduceAxes = (n: Node): number[] => {
  const x = inp(n, 0)
  if (!n.inputs[1]) return x.shape.map((_, i) => i)
  const axes = constInts(n.inputs[1])
  if (!axes) throw new GradientError(`${n.op}: gradients need constant axes`)
  return axes.map((a) => (a < 0 ? a + x.rank : a))
}

const lastTwoSwapped = (g: Graph, v: Value): Value => {
  const perm = v.shape.map((_, i) => i)
  perm[v.rank - 1] = v.rank - 2
  perm[v.rank - 2] = v.rank - 1
  return g.transpose(v, perm)
}

const matMulRule: Rule = (g, n, [gy], needs) => {
  const a = inp(n, 0)
  const b = inp(n, 1)
  const G = gy as Value
  const a2 = a.rank === 1 ? g.unsqueeze(a, [0]) : a
  const b2 = b.rank === 1 ? g.unsqueeze(b, [1]) : b
  let g2 = G
  if (b.rank === 1) g2 = g.unsqueeze(g2, [-1])
  if (a.rank === 1) g2 = g.unsqueeze(g2, [g2.rank - 1])
  let ga: Value | null = null
  let gb: Value | null = null
  if (needs[0]) {
    ga = unbroadcast(g, g.matMul(g2, lastTwoSwapped(g, b2)), a2)
    if (a.rank === 1) ga = g.squeeze(ga, [0])
  }
  if (needs[1]) {
    if (b2.rank === 2 && a2.rank > 2) {
      // [.., M, K] x [K, N]: fold the batch into M and use one GEMM instead of a batched
      // product followed by a reduction
      const k = a2.shape[a2.rank - 1]
      const nn = b2.shape[1]
      const af = g.reshape(a2, [-1, typeof k === "number" ? k : -1])
      const gf = g.reshape(g2, [-1, typeof nn === "number" ? nn : -1])
      gb = g.gemm(af, gf, null, { transA: true })
      if (gb.shape.some((d, i) => d !== b2.shape[i])) gb = g.reshapeLike(gb, b2)
    } else gb = unbroadcast(g, g.matMul(lastTwoSwapped(g, a2), g2), b2)
    if (b.rank === 1) gb = g.squeeze(gb, [1])
  }
  return [ga, gb]
}

const gemmRule: Rule = (g, n, [gy], needs) => {
  const A = inp(n, 0)
  const B = inp(n, 1)
  const C = n.inputs[2]
  const G = gy as Value
  const tA = attrInt(n, "transA", 0) === 1
  const tB = attrInt(n, "transB", 0) === 1
  const alpha = attrFloat(n, "alpha", 1)
  const beta = attrFloat(n, "beta", 1)
  const ga = needs[0] ? (tA ? g.gemm(B, G, null, { transA: tB, transB: true, alpha }) : g.gemm(G, B, null, { transB: !tB, alpha })) : null
  const gb = needs[1] ? (tB ? g.gemm(G, A, null, { transA: true, transB: tA, alpha }) : g.gemm(A, G, null, { transA: !tA, alpha })) : null
  const gc = C && needs[2] ? unbroadcast(g, beta === 1 ? G : g.mul(G, g.scalarLike(beta, G)), C) : null
  return [ga, gb, gc]
}

/** d/dx of layer/RMS normalization over the trailing axes from `axis`. */
const normRule =
  (centered: boolean): Rule =>
  (g, n, [gy], needs) => {
    const x = inp(n, 0)
    const scale = inp(n, 1)
    const bias = n.inputs[2] ?? null
    const G = gy as Value
    const axis = attrInt(n, "axis", -1)
    const a0 = axis < 0 ? axis + x.rank : axis
    const axes = x.shape.map((_, i) => i).filter((i) => i >= a0)
    const eps = g.scalarLike(attrFloat(n, "epsilon", 1e-5), x)
    const xc = centered ? g.sub(x, g.reduceMean(x, axes, true)) : x
    const rstd = g.reciprocal(g.sqrt(g.add(g.reduceMean(g.mul(xc, xc), axes, true), eps)))
    const xhat = g.mul(xc, rstd)
    const gxhat = g.mul(G, scale)
    let gx: Value | null = null
    if (needs[0]) {
      let inner = g.sub(gxhat, g.mul(xhat, g.reduceMean(g.mul(gxhat, xhat), axes, true)))
      if (centered) inner = g.sub(inner, g.reduceMean(gxhat, axes, true))
      gx = g.mul(rstd, inner)
    }
    const gs = needs[1] ? unbroadcast(g, g.mul(G, xhat), scale) : null
    const gb = bias && needs[2] ? unbroadcast(g, G, bias) : null
    return centered ? [gx, gs, gb] : [gx, gs]
  }

/** Pads for the adjoint of a step-1 Slice, when starts, ends and the sliced dims are fixed. */
const staticSlicePads = (n: Node): { begin: number[]; end: number[] } | undefined => {
  const x = inp(n, 0)
  const starts = constInts(n.inputs[1])
  const ends = constInts(n.inputs[2])
  const axes = n.inputs[3] ? constInts(n.inputs[3]) : x.shape.map((_, i) => i)
  const steps = n.inputs[4] ? constInts(n.inputs[4]) : undefined
  if (!starts || !ends || !axes || (steps && steps.some((s) => s !== 1))) return undefined
  const begin = x.shape.map(() => 0)
  const end = x.shape.map(() => 0)
  for (let k = 0; k < axes.length; k++) {
    const a = axes[k] < 0 ? axes[k] + x.rank : axes[k]
    const d = x.shape[a]
    if (typeof d !== "number") return undefined
    const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d)
    const s = clamp(starts[k])
    const e = Math.max(clamp(ends[k]), s)
    begin[a] = s
    end[a] = d - e
  }
  return { begin, end }
}

const sliceRule: Rule = (g, n, [gy]) => {
  const x = inp(n, 0)
  const G = gy as Value
  const pads = staticSlicePads(n)
  if (pads) return [g.pad(G, g.ints([...pads.begin, ...pads.end]))].map((v) => g.reshapeLike(v, x))
  // General case (run-time bounds, steps): slice an index map of x the same way and
  // scatter-add the gradient into zeros at those flat indices.
  const total = g.size(x)
  const idx = g.reshapeLike(g.range(g.constant("int64", [], [0]), total, g.constant("int64", [], [1])), x)
  const picked = g.node("Slice", [idx, ...n.inputs.slice(1)], {}, [{ dtype: "int64", shape: G.shape }])[0]
  const flat = g.constantOfShape(g.reshape(total, [1]), 0, x.dtype, [null])
  const scattered = g.scatterElements(flat, g.reshape(picked, [-1]), g.reshape(G, [-1]), 0, "add")
  return [g.reshapeLike(scattered, x)]
}

const gatherRule: Rule = (g, n, [gy]) => {
  const data = inp(n, 0)
  const indices = inp(n, 1)
  const axis = attrInt(n, "axis", 0)
  const a = axis < 0 ? axis + data.rank : axis
  let G = gy as Value
  const q = indices.rank
  // Move the gathered axis of data (and the index block of the gradient) to the front.
  const permD = [a, ...data.shape.map((_, i) => i).filter((i) => i !== a)]
  const dataT = a === 0 ? data : g.transpose(data, permD)
  if (a !== 0) {
    const r = G.rank
    const idxAxes = Array.from({ length: q }, (_, i) => a + i)
    G = g.transpose(G, [...idxAxes, ...Array.from({ length: r }, (_, i) => i).filter((i) => !idxAxes.includes(i))])
  }
  const idx = g.unsqueeze(indices.dtype === "int64" ? indices : g.cast(indices, "int64"), [-1])
  const zeros = g.zerosLike(dataT)
  const gT = g.scatterND(zeros, idx, G, "add")
  if (a === 0) return [gT, null]
  const inv = permD.map((_, i) => permD.indexOf(i))
  return [g.transpose(gT, inv), null]
}

const concatRule: Rule = (g, n, [gy], needs) => {
  const axis = attrInt(n, "axis", 0)
  const G = gy as Value
  const sizes = n.inputs.map((v) => (v as Value).shape[axis])
  if (sizes.every((d): d is number => typeof d === "number")) return g.split(G, sizes, axis).map((v, i) => (needs[i] ? v : null))
  // run-time sizes: slice each part from its running offset
  let offset = g.ints([0])
  return n.inputs.map((v, i) => {
    const len = g.shapeOf(v as Value, axis, axis + 1)
    const end = g.add(offset, len)
    const part = needs[i] ? g.reshapeLike(g.slice(G, offset, end, [axis]), v as Value) : null
    offset = end
    return part
  })
}

const splitRule: Rule = (g, n, gys) => {
  const axis = attrInt(n, "axis", 0)
  const parts = n.outputs.map((o, i) => gys[i] ?? g.zerosLike(o))
  return [g.concat(parts, axis), null]
}

const selectRule =
  (cmp: (g: Graph, a: Value, b: Value) => Value): Rule =>
  (g, n, [gy], needs) => {
    const a = inp(n, 0)
    const b = inp(n, 1)
    const G = gy as Value
    const zero = g.scalarLike(0, G)
    const pickA = cmp(g, a, b) // ties go to the first input
    return [needs[0] ? unbroadcast(g, g.where(pickA, G, zero), a) : null, needs[1] ? unbroadcast(g, g.where(pickA, zero, G), b) : null]
  }

const rules: Record<string, Rule> = {
  Identity: (_g, _n, [gy]) => [gy],
  Add: (g, n, [gy], needs) => [needs[0] ? unbroadcast(g, gy as Value, inp(n, 0)) : null, needs[1] ? unbroadcast(g, gy as Value, inp(n, 1)) : null],
  Sub: (g, n, [gy], needs) => [needs[0] ? unbroadcast(g, gy as Value, inp(n, 0)) : null, needs[1] ? unbroadcast(g, g.neg(gy as Value), inp(n, 1)) : null],
  Mul: (g, n, [gy], needs) => [
    needs[0] ? unbroadcast(g, g.mul(gy as Value, inp(n, 1)), inp(n, 0)) : null,
    needs[1] ? unbroadcast(g, g.mul(gy as Value, inp(n, 0)), inp(n, 1)) : null,
  ],
  Div: (g, n, [gy], needs) => {
    const b = inp(n, 1)
    const ga = g.div(gy as Value, b)
    return [needs[0] ? unbroadcast(g, ga, inp(n, 0)) : null, needs[1] ? unbroadcast(g, g.neg(g.mul(ga, n.outputs[0])), b) : null]
  },
  Pow: (g, n, [gy], needs) => {
    const a = inp(n, 0)
    const b = inp(n, 1)
    const G = gy as Value
    const ga = needs[0] ? unbroadcast(g, g.mul(G, g.mul(b, g.pow(a, g.sub(b, g.scalarLike(1, b))))), a) : null
    const gb = needs[1] ? unbroadcast(g, g.mul(G, g.mul(n.outputs[0], g.log(a))), b) : null
    return [ga, gb]
  },
  Neg: (g, _n, [gy]) => [g.neg(gy as Value)],
  Exp: (g, n, [gy]) => [g.mul(gy as Value, n.outputs[0])],
  Log: (g, n, [gy]) => [g.div(gy as Value, inp(n, 0))],
  Sqrt: (g, n, [gy]) => [g.div(g.mul(gy as Value, g.scalarLike(0.5, n.outputs[0])), n.outputs[0])],
  Reciprocal: (g, n, [gy]) => {
    const y = n.outputs[0]
    return [g.neg(g.mul(gy as Value, g.mul(y, y)))]
  },
  Tanh: (g, n, [gy]) => {
    const y = n.outputs[0]
    return [g.mul(gy as Value, g.sub(g.scalarLike(1, y), g.mul(y, y)))]
  },
  Sigmoid: (g, n, [gy]) => {
    const y = n.outputs[0]
    return [g.mul(gy as Value, g.mul(y, g.sub(g.scalarLike(1, y), y)))]
  },
  Erf: (g, n, [gy]) => {
    const x = inp(n, 0)
    return [g.mul(gy as Value, g.mul(g.scalarLike(2 / Math.sqrt(Math.PI), x), g.exp(g.neg(g.mul(x, x)))))]
  },
  Relu: (g, n, [gy]) => {
    const x = inp(n, 0)
    const zero = g.scalarLike(0, x)
    return [g.where(g.greater(x, zero), gy as Value, zero)]
  },
  Abs: (g, n, [gy]) => [g.mul(gy as Value, g.sign(inp(n, 0)))],
  Cos: (g, n, [gy]) => [g.neg(g.mul(gy as Value, g.sin(inp(n, 0))))],
  Sin: (g, n, [gy]) => [g.mul(gy as Value, g.cos(inp(n, 0)))],
  Where: (g, n, [gy], needs) => {
    const c = inp(n, 0)
    const G = gy as Value
    const zero = g.scalarLike(0, G)
    return [null, needs[1] ? unbroadcast(g, g.where(c, G, zero), inp(n, 1)) : null, needs[2] ? unbroadcast(g, g.where(c, zero, G), inp(n, 2)) : null]
  },
  Max: selectRule((g, a, b) => g.greaterOrEqual(a, b)),
  Min: selectRule((g, a, b) => g.lessOrEqual(a, b)),
  Softmax: (g, n, [gy]) => {
    const y = n.outputs[0]
    const axis = attrInt(n, "axis", -1)
    const G = gy as Value
    return [g.mul(y, g.sub(G, g.reduceSum(g.mul(G, y), [axis], true)))]
  },
  LogSoftmax: (g, n, [gy]) => {
    const y = n.outputs[0]
    const axis = attrInt(n, "axis", -1)
    const G = gy as Value
    return [g.sub(G, g.mul(g.exp(y), g.reduceSum(G, [axis], true)))]
  },
  ReduceSum: (g, n, [gy]) => [expandBack(g, gy as Value, inp(n, 0), reduceAxes(n), attrInt(n, "keepdims", 1) === 1), null],
  ReduceMean: (g, n, [gy]) => {
    const x = inp(n, 0)
    const y = n.outputs[0]
    const count = g.cast(g.div(g.size(x), g.size(y)), x.dtype)
    return [g.div(expandBack(g, gy as Value, x, reduceAxes(n), attrInt(n, "keepdims", 1) === 1), count), null]
  },
  ReduceMax: (g, n, [gy]) => {
    // the gradient goes to every maximal element (ties are measure-zero for real data)
    const x = inp(n, 0)
    const axes = reduceAxes(n)
    const keep = attrInt(n, "keepdims", 1) === 1
    const yb = expandBack(g, n.outputs[0], x, axes, keep)
    return [g.where(g.equal(x, yb), expandBack(g, gy as Value, x, axes, keep), g.scalarLike(0, x)), null]
  },
  ReduceLogSumExp: (g, n, [gy]) => {
    const x = inp(n, 0)
    const axes = reduceAxes(n)
    const keep = attrInt(n, "keepdims", 1) === 1
    const p = g.exp(g.sub(x, expandBack(g, n.outputs[0], x, axes, keep)))
    return [g.mul(p, expandBack(g, gy as Value, x, axes, keep)), null]
  },
  MatMul: matMulRule,
  Gemm: gemmRule,
  LayerNormalization: normRule(true),
  RMSNormalization: normRule(false),
  Reshape: (g, n, [gy]) => {
    const x = inp(n, 0)
    return [x.shape.every((d) => typeof d === "number") ? g.reshape(gy as Value, x.shape as number[]) : g.reshapeLike(gy as Value, x), null]
  },
  Transpose: (g, n, [gy]) => {
    const perm = attrInts(n, "perm") ?? inp(n, 0).shape.map((_, i, s) => s.length - 1 - i)
    return [g.transpose(gy as Value, perm.map((_, i) => perm.indexOf(i)))]
  },
  Squeeze: (g, n, [gy]) => {
    const axes = constInts(n.inputs[1])
    if (!axes) throw new GradientError("Squeeze: gradients need constant axes")
    return [g.unsqueeze(gy as Value, axes.map((a) => (a < 0 ? a + inp(n, 0).rank : a))), null]
  },
  Unsqueeze: (g, n, [gy]) => {
    const axes = constInts(n.inputs[1])
    if (!axes) throw new GradientError("Unsqueeze: gradients need constant axes")
    return [g.squeeze(gy as Value, axes.map((a) => (a < 0 ? a + (gy as Value).rank : a))), null]
  },
  Concat: concatRule,
  Split: splitRule,
  Slice: sliceRule,
  Gather: gatherRule,
  GatherElements: (g, n, [gy]) => {
    const data = inp(n, 0)
    return [g.scatterElements(g.zerosLike(data), inp(n, 1), gy as Value, attrInt(n, "axis", 0), "add"), null]
  },
  Expand: (g, n, [gy]) => [unbroadcast(g, gy as Value, inp(n, 0)), null],
  Cast: (g, n, [gy]) => {
    const x = inp(n, 0)
    return [isFloat(x.dtype) ? g.cast(gy as Value, x.dtype) : null]
  },
  CumSum: (g, n, [gy]) => {
    const axis = constInts(n.inputs[1])
    if (!axis) throw new GradientError("CumSum: gradients need a constant axis")
    return [g.cumSum(gy as Value, axis[0], { exclusive: attrInt(n, "exclusive", 0) === 1, reverse: attrInt(n, "reverse", 0) !== 1 }), null]
  },
  Trilu: (g, n, [gy]) => {
    const k = constInts(n.inputs[1]) ?? [0]
    return [g.trilu(gy as Value, attrInt(n, "upper", 1) === 1, k[0]), null]
  },
  TopK: (g, n, [gv]) => {
    const x = inp(n, 0)
    return [g.scatterElements(g.zerosLike(x), n.outputs[1], gv as Value, attrInt(n, "axis", -1), "add"), null]
  },
}

/** Ops whose gradients have rules (for documentation and tests). */
export const differentiableOps = (): string[] => Object.keys(rules).sort()

/** Values of enclosing graphs that a subgraph (and its nested subgraphs) reads. */
const outerReads = (sub: GraphIR): Value[] => {
  const out: Value[] = []
  const visit = (gr: GraphIR) => {
    for (const n of gr.nodes) {
      for (const v of n.inputs) if (v && v.graph !== sub && !isInside(v.graph, sub)) out.push(v)
      for (const a of Object.values(n.attrs)) if (a.kind === "graph") visit(a.v)
    }
  }
  visit(sub)
  return out
}
const isInside = (gr: GraphIR, ancestor: GraphIR): boolean => {
  for (let p: GraphIR | undefined = gr; p; p = p.parent) if (p === ancestor) return true
  return false
}

const nodeReads = (n: Node): Value[] => {
  const reads = n.inputs.filter((v): v is Value => v !== null)
  for (const a of Object.values(n.attrs)) if (a.kind === "graph") for (const v of outerReads(a.v)) reads.push(v)
  return reads
}

/**
 * Appends to `g` the gradient of the scalar `loss` with respect to each of `wrt` (inputs,
 * initializers or any float values of g or of an enclosing graph) and returns them in order.
 */
export const gradients = (g: Graph, loss: Value, wrt: readonly Value[]): Value[] => {
  if (!isFloat(loss.dtype)) throw new GradientError(`loss ${loss.name} must be a float, got ${loss.dtype}`)
  if (!loss.shape.every((d) => d === 1)) throw new GradientError(`loss ${loss.name} must be a scalar, got shape [${loss.shape.join(", ")}]`)
  for (const w of wrt) if (!isFloat(w.dtype)) throw new GradientError(`cannot differentiate with respect to ${w.name} of dtype ${w.dtype}`)
  const nodes = [...g.nodes]
  // forward: float values that depend on a trainable value
  const tainted = new Set<Value>(wrt)
  for (const n of nodes) {
    if (nodeReads(n).some((v) => tainted.has(v))) for (const o of n.outputs) if (isFloat(o.dtype)) tainted.add(o)
  }
  // backward: values the loss depends on
  const needed = new Set<Value>([loss])
  const active: Node[] = []
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i]
    if (!n.outputs.some((o) => needed.has(o) && tainted.has(o))) continue
    active.push(n)
    for (const v of nodeReads(n)) needed.add(v)
  }
  const grads = new Map<Value, Value>()
  const accumulate = (v: Value, d: Value) => {
    const prev = grads.get(v)
    grads.set(v, prev ? g.add(prev, d) : d)
  }
  grads.set(loss, loss.rank === 0 ? g.scalarLike(1, loss) : g.constant(loss.dtype, loss.shape as number[], [1]))
  for (const n of active) {
    const gy = n.outputs.map((o) => grads.get(o) ?? null)
    if (gy.every((v) => v === null)) continue
    const targets = n.customGradient ? n.customGradient.wrt : n.inputs
    const needs = targets.map((v) => v !== null && tainted.has(v))
    let gx: readonly (Value | null)[]
    if (n.customGradient) gx = n.customGradient.rule(gy, needs)
    else {
      const hidden = Object.values(n.attrs).some((a) => a.kind === "graph") && outerReadsOfNode(n).some((v) => tainted.has(v))
      const rule = rules[n.op]
      if (!rule || hidden) throw new GradientError(`no gradient rule for ${n.op} (producing ${n.outputs.map((o) => o.name).join(", ")}); differentiable ops: ${differentiableOps().join(", ")}`)
      gx = rule(g, n, gy, needs)
    }
    targets.forEach((v, i) => {
      const d = gx[i]
      if (v && d && needs[i]) accumulate(v, d)
    })
  }
  return wrt.map((w) => grads.get(w) ?? g.zerosLike(w))
}

const outerReadsOfNode = (n: Node): Value[] => Object.values(n.attrs).flatMap((a) => (a.kind === "graph" ? outerReads(a.v) : []))
