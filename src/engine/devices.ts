// GPU discovery: `nvidia-smi` when present, none otherwise (CPU-only machines, CI).
import { queryGpus } from "../runtime/gpus.ts"

export const detectGpus = (): ReadonlyArray<number> => queryGpus().map((g) => g.index)

/** `--gpus 0,1` -> [0, 1]; `--gpus none` -> []. */
export const parseGpus = (text: string): ReadonlyArray<number> | undefined => {
  if (text === "none" || text === "") return []
  const ids = text.split(",").map((s) => s.trim())
  return ids.every((s) => /^\d+$/.test(s)) ? ids.map(Number) : undefined
}
