// Shape inference helpers shared by the op methods of the builder. Every failure is a
// ShapeError naming the op and the offending shapes.
import { type Dim, formatShape, type Shape } from "./ir.ts"

export class ShapeError extends Error {
  override readonly name = "ShapeError"
  constructor(op: string, message: string, shapes: readonly Shape[]) {
    super(`${op}: ${message} (input shapes ${shapes.map(formatShape).join(", ")})`)
  }
}

/** Numpy-style broadcast of two dims: 1 stretches; different symbols give an unknown dim
 * (checked by onnxruntime at run time); two different fixed sizes are an error. */
const broadcastDim = (op: string, a: Dim, b: Dim, shapes: readonly Shape[]): Dim => {
  if (a === b) return a
  if (a === 1) return b
  if (b === 1) return a
  if (typeof a === "number" && typeof b === "number") throw new ShapeError(op, `cannot broadcast ${a} with ${b}`, shapes)
  if (typeof a === "number") return a
  if (typeof b === "number") return b
  return null
}

export const broadcastShapes = (op: string, shapes: readonly Shape[]): Shape => {
  const rank = shapes.reduce((r, s) => Math.max(r, s.length), 0)
  const out: Dim[] = []
  for (let i = 0; i < rank; i++) {
    let d: Dim = 1
    for (const s of shapes) {
      const k = i - (rank - s.length)
      if (k >= 0) d = broadcastDim(op, d, s[k], shapes)
    }
    out.push(d)
  }
  return out
}

export const normAxis = (op: string, axis: number, rank: number, shapes: readonly Shape[]): number => {
  const a = axis < 0 ? axis + rank : axis
  if (a < 0 || a >= rank) throw new ShapeError(op, `axis ${axis} out of range for rank ${rank}`, shapes)
  return a
}

export const dimsEqual = (a: Dim, b: Dim): boolean => a !== null && a === b

/** Product of dims as a fixed number, or null when any is symbolic/unknown. */
export const staticSize = (s: Shape): number | null => {
  let n = 1
  for (const d of s) {
    if (typeof d !== "number") return null
    n *= d
  }
  return n
}

export const isStatic = (s: Shape): s is readonly number[] => s.every((d) => typeof d === "number")

/** Reshape with ONNX semantics: 0 copies the input dim (allowzero=0), -1 is inferred. */
export const reshapeShape = (op: string, input: Shape, target: readonly number[]): Shape => {
  const out: Dim[] = target.map((t, i) => {
    if (t === 0) {
      if (i >= input.length) throw new ShapeError(op, `target ${JSON.stringify(target)} copies dim ${i} that the input lacks`, [input])
      return input[i]
    }
    return t === -1 ? null : t
  })
  const minus = target.filter((t) => t === -1).length
  if (minus > 1) throw new ShapeError(op, `target ${JSON.stringify(target)} has more than one -1`, [input])
  // Factor the input dims that are not copied into a number and a multiset of symbols.
  let num = 1
  const syms: Dim[] = []
  input.forEach((d, i) => {
    if (target[i] === 0) return
    if (typeof d === "number") num *= d
    else syms.push(d)
  })
  let known = 1
  target.forEach((t) => {
    if (t > 0) known *= t
  })
  if (minus === 0) {
    if (syms.length === 0 && num !== known) throw new ShapeError(op, `cannot reshape ${num} elements into ${JSON.stringify(target)}`, [input])
    return out
  }
  const at = target.indexOf(-1)
  if (syms.length === 0) {
    if (num % known !== 0) throw new ShapeError(op, `cannot reshape ${num} elements into ${JSON.stringify(target)}`, [input])
    out[at] = num / known
  } else if (syms.length === 1 && syms[0] !== null && num === known) {
    out[at] = syms[0]
  }
  return out
}

export const matMulShape = (op: string, a: Shape, b: Shape): Shape => {
  if (a.length === 0 || b.length === 0) throw new ShapeError(op, "operands must have rank >= 1", [a, b])
  const a2 = a.length === 1 ? [1, a[0]] : a
  const b2 = b.length === 1 ? [b[0], 1] : b
  const k1 = a2[a2.length - 1]
  const k2 = b2[b2.length - 2]
  if (typeof k1 === "number" && typeof k2 === "number" && k1 !== k2) throw new ShapeError(op, `inner dims ${k1} and ${k2} differ`, [a, b])
  if (typeof k1 === "string" && typeof k2 === "string" && k1 !== k2) throw new ShapeError(op, `inner dims ${k1} and ${k2} differ`, [a, b])
  const batch = broadcastShapes(op, [a2.slice(0, -2), b2.slice(0, -2)])
  const out: Dim[] = [...batch, a2[a2.length - 2], b2[b2.length - 1]]
  if (b.length === 1) out.pop()
  if (a.length === 1) out.splice(out.length - (b.length === 1 ? 1 : 2), 1)
  return out
}
