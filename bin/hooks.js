// Module resolution hooks for TypeScript files loaded next to the compiled CLI (registered by
// typescript.js, above tsx): a pipeline or stage file that imports the project's sources
// (`../src/engine/index.ts`) gets the compiled module from dist/ that the CLI itself runs, so both
// share one engine (the same classes, tagged errors and module-level caches) instead of a second
// copy loaded through tsx.
let srcUrl
let distUrl

export const initialize = (data) => {
  srcUrl = data.srcUrl
  distUrl = data.distUrl
}

export const resolve = async (specifier, context, nextResolve) => {
  const resolved = await nextResolve(specifier, context)
  if (!resolved.url.startsWith(srcUrl) || !resolved.url.endsWith(".ts")) return resolved
  return { url: `${distUrl}${resolved.url.slice(srcUrl.length, -3)}.js`, format: "module", shortCircuit: true }
}
