// Content hashing: sha256 of bytes, of files (streamed in chunks) and of canonical JSON.
import { createHash } from "node:crypto"
import { closeSync, openSync, readSync } from "node:fs"

export const sha256 = (data: string | Uint8Array): string => createHash("sha256").update(data).digest("hex")

/** sha256 of a file's bytes, read in 4 MiB chunks so large weight files never sit in memory whole. */
export const hashFile = (path: string): string => {
  const hash = createHash("sha256")
  const buffer = Buffer.allocUnsafe(4 << 20)
  const fd = openSync(path, "r")
  try {
    for (;;) {
      const n = readSync(fd, buffer, 0, buffer.length, null)
      if (n === 0) break
      hash.update(buffer.subarray(0, n))
    }
  } finally {
    closeSync(fd)
  }
  return hash.digest("hex")
}

/**
 * JSON with object keys sorted at every level, so equal values always give equal text (and hash).
 * Rejects what JSON cannot represent faithfully (undefined, functions, NaN, Infinity, bigint).
 */
export const canonicalJson = (value: unknown): string => {
  const walk = (v: unknown, path: string): string => {
    if (v === null || typeof v === "boolean" || typeof v === "string") return JSON.stringify(v)
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw new Error(`${path || "value"}: ${v} cannot be hashed as JSON`)
      return JSON.stringify(v)
    }
    if (Array.isArray(v)) return `[${v.map((x, i) => walk(x, `${path}[${i}]`)).join(",")}]`
    if (typeof v === "object") {
      const entries = Object.keys(v as object)
        .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
        .sort()
        .map((k) => `${JSON.stringify(k)}:${walk((v as Record<string, unknown>)[k], path ? `${path}.${k}` : k)}`)
      return `{${entries.join(",")}}`
    }
    throw new Error(`${path || "value"}: a ${typeof v} cannot be hashed as JSON`)
  }
  return walk(value, "")
}

export const hashJson = (value: unknown): string => sha256(canonicalJson(value))
