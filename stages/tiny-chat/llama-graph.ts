// train-lm trains on right-padded batches. Those need no attention mask under causal attention:
// padding comes after every real token, so no real position attends to it, and the loss masks
// the padded positions itself.
import type { Graph, Value } from "../../src/graph/index.ts"
import type { ModelConfig, ModelWeights } from "../../src/models/checkpoint.ts"
import { decoder, type DecoderOutputs, type WeightSource } from "../../src/models/forward.ts"

/** The decoder over right-padded token ids [B, T] (int64), positions 0..T-1 in every row. */
export const rightPaddedDecoder = (g: Graph, config: ModelConfig, weights: ModelWeights, source: WeightSource, ids: Value): DecoderOutputs =>
  decoder(g, config, weights, source, { ids, mask: g.constantOfShape(g.shapeOf(ids), 1, "int64", ids.shape) })
