// `pipe doctor`: what this machine can run on. onnxruntime-node ships its CPU provider; the
// CUDA provider is two shared libraries that must sit next to libonnxruntime.so.1 and match
// its version, plus a driver and a GPU. Each missing piece is named with the path looked at.
import { existsSync } from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { Graph, serialize } from "../graph/index.ts"
import { type Gpu, queryGpus } from "../engine/devices.ts"
import { createSession, cuda } from "./session.ts"

/** The folder holding onnxruntime-node's native binding and libonnxruntime.so.1. */
export const ortLibraryDir = (): string => {
  const pkg = createRequire(import.meta.url).resolve("onnxruntime-node/package.json")
  return path.join(path.dirname(pkg), "bin", "napi-v6", process.platform, process.arch)
}

export const cudaProviderLibraries = ["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"] as const

export interface DoctorReport {
  readonly lines: ReadonlyArray<string>
  /** What stops a CUDA session from being created here; empty when one was created. */
  readonly cudaMissing: ReadonlyArray<string>
}

const tinyGraph = (): Uint8Array => {
  const g = new Graph("doctor")
  const x = g.input("x", "float32", [2])
  g.outputAs("y", g.add(x, x))
  return serialize(g)
}

/** Checks the runtime; tries a CUDA session on the first GPU when the libraries and a GPU are there. */
export const doctor = (libraryDir: string = ortLibraryDir(), gpus: ReadonlyArray<Gpu> = queryGpus()): Effect.Effect<DoctorReport> =>
  Effect.gen(function* () {
    const lines: string[] = []
    const cudaMissing: string[] = []
    lines.push(`node ${process.version}, onnxruntime-node ${ort.env.versions.node} (libraries in ${libraryDir})`)
    const backends = ort.listSupportedBackends()
    lines.push(`execution providers: ${backends.map((b) => `${b.name}${b.bundled ? "" : " (not bundled)"}`).join(", ")}`)
    for (const lib of cudaProviderLibraries) {
      const file = path.join(libraryDir, lib)
      const found = existsSync(file)
      lines.push(`${lib}: ${found ? "found" : "missing"} (${file})`)
      if (!found) cudaMissing.push(`${lib} is not in ${libraryDir}`)
    }
    if (gpus.length === 0) {
      lines.push("GPUs: none found (nvidia-smi absent or it lists no GPU)")
      cudaMissing.push("no GPU found by nvidia-smi")
    }
    for (const gpu of gpus) lines.push(`GPU ${gpu.index}: ${gpu.name}, ${gpu.memoryMiB} MiB, driver ${gpu.driver}`)
    if (cudaMissing.length === 0) {
      const created = yield* Effect.result(createSession(tinyGraph(), { device: cuda(gpus[0].index) }))
      if (created._tag === "Success") lines.push(`CUDA session on cuda:${gpus[0].index}: created`)
      else {
        lines.push(`CUDA session on cuda:${gpus[0].index}: failed: ${created.failure.message}`)
        cudaMissing.push(`a CUDA session could not be created: ${created.failure.message}`)
      }
    }
    lines.push(cudaMissing.length === 0 ? "CUDA: ready" : `CUDA: not available: ${cudaMissing.join("; ")}`)
    return { lines, cudaMissing }
  })
