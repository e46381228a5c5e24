// The graph IR: values (typed, shaped edges), nodes (ONNX ops) and graphs (node lists with
// inputs, outputs and initializers). Graphs are built by `Graph` in builder.ts; nodes are
// always appended in topological order, which autodiff and serialization rely on.
import type { DType, HostArray } from "./dtype.ts"

/** A dimension: a fixed size, a symbolic name (equal names mean equal sizes), or unknown (null). */
export type Dim = number | string | null
export type Shape = readonly Dim[]

/** Where an initializer's bytes live. */
export type TensorSource =
  | { readonly kind: "inline"; readonly data: HostArray }
  /** Bytes in another file (e.g. a tensor inside a .safetensors file); `location` is written
   * into the model as-is and resolved by onnxruntime relative to the model file's directory. */
  | { readonly kind: "external"; readonly location: string; readonly offset: number; readonly length: number }

export interface Initializer {
  readonly value: Value
  readonly source: TensorSource
}

export type AttrValue =
  | { readonly kind: "int"; readonly v: number }
  | { readonly kind: "float"; readonly v: number }
  | { readonly kind: "string"; readonly v: string }
  | { readonly kind: "ints"; readonly v: readonly number[] }
  | { readonly kind: "floats"; readonly v: readonly number[] }
  | { readonly kind: "tensor"; readonly dtype: DType; readonly shape: readonly number[]; readonly data: HostArray }
  | { readonly kind: "graph"; readonly v: GraphIR }

/** Gradient of a node computed by a custom rule instead of the op's registered rule (used
 * by composite ops such as the chunked losses, whose backward recomputes each chunk).
 * `wrt` are the values the node depends on, including values its subgraphs read from
 * enclosing graphs; `rule` gets the gradient of each output and returns one per `wrt`. */
export interface CustomGradient {
  readonly wrt: readonly Value[]
  readonly rule: (gradOutputs: readonly (Value | null)[], needs: readonly boolean[]) => readonly (Value | null)[]
}

export interface Node {
  readonly op: string
  readonly domain: string
  readonly inputs: readonly (Value | null)[]
  readonly outputs: readonly Value[]
  readonly attrs: Readonly<Record<string, AttrValue>>
  readonly customGradient?: CustomGradient
}

export class Value {
  constructor(
    /** Unique in the model; the builder may rename a node output once, when it becomes a
     * graph output (see Graph.outputAs), which saves an Identity copy. */
    public name: string,
    readonly dtype: DType,
    readonly shape: Shape,
    /** The graph the value is defined in (subgraphs may read values of enclosing graphs). */
    readonly graph: GraphIR,
    /** The node producing this value; undefined for graph inputs and initializers. */
    readonly producer: Node | undefined,
  ) {}
  get rank(): number {
    return this.shape.length
  }
}

/** The data part of a graph; `Graph` (builder.ts) extends it with op methods. */
export interface GraphIR {
  readonly name: string
  readonly parent: GraphIR | undefined
  readonly inputs: Value[]
  readonly outputs: Value[]
  readonly initializers: Initializer[]
  readonly nodes: Node[]
}

export const formatShape = (s: Shape): string => `[${s.map((d) => (d === null ? "?" : String(d))).join(", ")}]`
