// GPU discovery: `nvidia-smi` when present, none otherwise (CPU-only machines, CI).
import { execFileSync } from "node:child_process"

export interface Gpu {
  readonly index: number
  readonly name: string
  readonly memoryMiB: number
  readonly driver: string
}

/** GPUs as `nvidia-smi` lists them; none where it is absent or fails (CPU-only machines, CI). */
export const queryGpus = (): ReadonlyArray<Gpu> => {
  let out: string
  try {
    out = execFileSync("nvidia-smi", ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 10_000,
    })
  } catch {
    return []
  }
  return out
    .split("\n")
    .map((line) => line.split(",").map((f) => f.trim()))
    .filter((f) => f.length === 4 && /^\d+$/.test(f[0]))
    .map(([index, name, memory, driver]) => ({ index: Number(index), name, memoryMiB: Number(memory), driver }))
}

export const detectGpus = (): ReadonlyArray<number> => queryGpus().map((g) => g.index)

/** `--gpus 0,1` -> [0, 1]; `--gpus none` -> []. */
export const parseGpus = (text: string): ReadonlyArray<number> | undefined => {
  if (text === "none" || text === "") return []
  const ids = text.split(",").map((s) => s.trim())
  return ids.every((s) => /^\d+$/.test(s)) ? ids.map(Number) : undefined
}
