// Row-chunked reductions: sum over the rows of some [N, ...] tensors of a per-row quantity
// computed chunk by chunk in an ONNX Loop, so a per-chunk intermediate such as a
// [chunk x vocab] logits block exists for one chunk at a time and [N x vocab] never does.
// Its gradient is a second Loop that recomputes each chunk and differentiates it there.
import type { Graph } from "./builder.ts"
import { gradients } from "./autodiff.ts"
import type { DType } from "./dtype.ts"
import type { Value } from "./ir.ts"

export interface ChunkedSumSpec {
  /** tensors sharing the leading dim N, cut into chunks of `chunk` rows */
  readonly rows: readonly Value[]
  /** tensors every chunk reads whole (e.g. the LM head weight) */
  readonly shared: readonly Value[]
  readonly chunk: number
  /** dtype of the per-row contributions (and of the sum) */
  readonly dtype: DType
  /** dims of the per-row contribution after the row axis ([] for a scalar per row) */
  readonly perRowShape: readonly number[]
  /** per-row contributions [C, ...perRowShape] of one chunk (rows beyond N are masked out) */
  readonly body: (sub: Graph, rows: Value[], shared: readonly Value[]) => Value
}

/** Pads each row tensor at the end of axis 0 (edge mode: padded rows are valid copies). */
const padRows = (g: Graph, rows: readonly Value[], n: Value, chunk: number) => {
  const c = g.ints([chunk])
  const numChunks = g.div(g.add(n, g.sub(c, g.ints([1]))), c)
  const padAmount = g.sub(g.mul(numChunks, c), n)
  const padded = rows.map((r) => {
    const zeros = new Array(r.rank - 1).fill(0)
    const pads = g.concat([g.ints(new Array(r.rank).fill(0)), padAmount, ...(zeros.length ? [g.ints(zeros)] : [])], 0)
    return g.pad(r, pads, "edge")
  })
  return { numChunks: g.reshape(numChunks, []), padded }
}

/** Slices chunk `iter` of every padded row tensor and the validity mask of its rows. */
const chunkRows = (sub: Graph, padded: readonly Value[], iter: Value, n: Value, chunk: number) => {
  const start = sub.mul(sub.reshape(iter, [1]), sub.ints([chunk]))
  const end = sub.add(start, sub.ints([chunk]))
  const rows = padded.map((p) => sub.slice(p, start, end, [0]))
  const index = sub.add(start, sub.range(sub.constant("int64", [], [0]), sub.constant("int64", [], [chunk]), sub.constant("int64", [], [1])))
  return { rows, valid: sub.less(index, n) }
}

const maskedRowSum = (sub: Graph, perRow: Value, valid: Value): Value => {
  const v = perRow.rank > 1 ? sub.reshape(valid, [-1, ...new Array(perRow.rank - 1).fill(1)]) : valid
  return sub.reduceSum(sub.where(v, perRow, sub.scalarLike(0, perRow)), [0])
}

/** Σ over rows of body(rows)[row], shape `perRowShape`, differentiable w.r.t. rows and shared. */
export const chunkedSum = (g: Graph, spec: ChunkedSumSpec): Value => {
  if (spec.rows.length === 0) throw new Error("chunkedSum: needs at least one row tensor")
  const n = g.shapeOf(spec.rows[0], 0, 1)
  const { numChunks, padded } = padRows(g, spec.rows, n, spec.chunk)
  const forward = (sub: Graph, iter: Value) => {
    const { rows, valid } = chunkRows(sub, padded, iter, n, spec.chunk)
    const perRow = spec.body(sub, rows, spec.shared)
    if (perRow.dtype !== spec.dtype) throw new Error(`chunkedSum: the body returned ${perRow.dtype}, expected ${spec.dtype}`)
    return { perRow, valid, rows }
  }
  const zero = g.constant(spec.dtype, spec.perRowShape, new Array(spec.perRowShape.reduce((a, b) => a * b, 1)).fill(0))
  const [total] = g.loop(numChunks, null, [zero], (sub, iter, [acc]) => {
    const { perRow, valid } = forward(sub, iter)
    return { carried: [sub.add(acc, maskedRowSum(sub, perRow, valid))] }
  })
  const out = g.node("Identity", [total], {}, [{ dtype: spec.dtype, shape: spec.perRowShape }], undefined, {
    customGradient: {
      wrt: [...spec.rows, ...spec.shared],
      rule: ([gy], needs) => {
        const needRows = spec.rows.map((_, i) => needs[i])
        const needShared = spec.shared.map((_, i) => needs[spec.rows.length + i])
        const sharedIdx = spec.shared.map((_, i) => i).filter((i) => needShared[i])
        const rowIdx = spec.rows.map((_, i) => i).filter((i) => needRows[i])
        const init = sharedIdx.map((i) => g.zerosLike(spec.shared[i]))
        const results = g.loop(numChunks, null, init, (sub, iter, acc) => {
          const { perRow, valid, rows } = forward(sub, iter)
          // d/d(chunk inputs) of <upstream gradient, this chunk's masked sum>
          const lossC = sub.reduceSum(sub.mul(maskedRowSum(sub, perRow, valid), gy as Value))
          const grads = gradients(sub, lossC, [...rowIdx.map((i) => rows[i]), ...sharedIdx.map((i) => spec.shared[i])])
          return {
            carried: sharedIdx.map((_, k) => sub.add(acc[k], grads[rowIdx.length + k])),
            scans: rowIdx.map((_, k) => grads[k]),
          }
        })
        const sharedGrads = results.slice(0, sharedIdx.length)
        const rowGrads = results.slice(sharedIdx.length).map((stacked, k) => {
          const r = spec.rows[rowIdx[k]]
          // [numChunks, chunk, ...] -> [numChunks*chunk, ...] -> first N rows
          const flat = g.reshape(stacked, g.concat([g.ints([-1]), g.shapeOf(r, 1)], 0))
          return g.reshapeLike(g.slice(flat, g.ints([0]), n, [0]), r)
        })
        return [...spec.rows.map((_, i) => (needRows[i] ? rowGrads[rowIdx.indexOf(i)] : null)), ...spec.shared.map((_, i) => (needShared[i] ? sharedGrads[sharedIdx.indexOf(i)] : null))]
      },
    },
  })[0]
  return out
}
