// GPU discovery: `nvidia-smi` when present, none otherwise (CPU-only machines, CI).
import { execFileSync } from "node:child_process"

export const detectGpus = (): ReadonlyArray<number> => {
  try {
    const out = execFileSync("nvidia-smi", ["--query-gpu=index", "--format=csv,noheader"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 })
    return out.split("\n").map((l) => l.trim()).filter((l) => /^\d+$/.test(l)).map(Number)
  } catch {
    return []
  }
}

/** `--gpus 0,1` -> [0, 1]; `--gpus none` -> []. */
export const parseGpus = (text: string): ReadonlyArray<number> | undefined => {
  if (text === "none" || text === "") return []
  const ids = text.split(",").map((s) => s.trim())
  return ids.every((s) => /^\d+$/.test(s)) ? ids.map(Number) : undefined
}
