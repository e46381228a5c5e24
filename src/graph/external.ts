// External data: initializers whose bytes stay in another file (e.g. a tensor inside a
// .safetensors file) so multi-GB weights are never copied into the .onnx.
//
// onnxruntime 1.30 resolves an external `location` relative to the directory of the .onnx
// file it loads and rejects absolute locations and any location whose *resolved* path
// (symlinks followed) leaves that directory; models loaded from bytes resolve against the
// working directory under the same rule. So the .onnx must be written into a directory
// that contains the real weight files (for the HF hub cache layout, whose snapshot files
// are symlinks into ../../blobs, that is the `models--org--name` directory).
import { realpathSync } from "node:fs"
import { isAbsolute, relative, sep } from "node:path"
import type { TensorSource } from "./ir.ts"

export class ExternalDataError extends Error {
  override readonly name = "ExternalDataError"
}

/**
 * The source for `length` bytes at `offset` in `file`, for a model that will be written into
 * `modelDir`. The location is the path of the file's real path relative to modelDir's real path.
 * For a safetensors tensor: offset = 8 + headerLength + data_offsets[0], length = end - begin.
 */
export const externalSource = (modelDir: string, file: string, offset: number, length: number): TensorSource => {
  const resolve = (p: string, what: string) => {
    try {
      return realpathSync(p)
    } catch (e) {
      throw new ExternalDataError(`external data: cannot resolve the ${what} ${p}: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  const dir = resolve(modelDir, "model directory")
  const real = resolve(file, "weights file")
  const location = relative(dir, real)
  if (location.startsWith(`..${sep}`) || location === ".." || isAbsolute(location))
    throw new ExternalDataError(
      `external data ${file} (real path ${real}) is outside ${dir}: onnxruntime only reads external data under the .onnx file's directory; write the model into a directory that contains the weights`,
    )
  return { kind: "external", location: location.split(sep).join("/"), offset, length }
}
