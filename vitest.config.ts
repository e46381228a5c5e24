import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    // Numeric and end-to-end tests build ONNX sessions and spawn `pipe` processes.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // The CI machine has 2 cores; more forks only add contention.
    maxWorkers: 2,
  },
})
