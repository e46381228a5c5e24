// `pipe doctor` on real folders: it names each missing CUDA piece with the path it looked at.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { cudaProviderLibraries, doctor, ortLibraryDir } from "../../src/runtime/doctor.ts"

describe("doctor", () => {
  it("names both CUDA provider libraries and the missing GPU when neither is there", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-doctor-"))
    const report = await Effect.runPromise(doctor(dir, []))
    expect(report.cudaMissing).toEqual([
      `libonnxruntime_providers_shared.so is not in ${dir}`,
      `libonnxruntime_providers_cuda.so is not in ${dir}`,
      "no GPU found by nvidia-smi",
    ])
    expect(report.lines.at(-1)).toBe(`CUDA: not available: ${report.cudaMissing.join("; ")}`)
  })

  it("finds libraries that are present and reports the installed runtime", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-doctor-"))
    for (const lib of cudaProviderLibraries) fs.writeFileSync(path.join(dir, lib), "")
    const report = await Effect.runPromise(doctor(dir, []))
    expect(report.cudaMissing).toEqual(["no GPU found by nvidia-smi"])
    expect(report.lines).toContain(`libonnxruntime_providers_cuda.so: found (${path.join(dir, "libonnxruntime_providers_cuda.so")})`)
    expect(report.lines[0]).toContain(`onnxruntime-node ${ort.env.versions.node}`)
    expect(report.lines[1]).toMatch(/^execution providers: cpu[,\s]/)
  })

  it("looks for the libraries next to onnxruntime-node's own libonnxruntime.so.1", () => {
    expect(fs.existsSync(path.join(ortLibraryDir(), "libonnxruntime.so.1"))).toBe(true)
  })
})
