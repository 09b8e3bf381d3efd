import { defineConfig } from "vitest/config";

// The suites run against a real server that tests/sdk/test_js.py starts, one file at a time
// (they share its rate limit and data), in Node.
export default defineConfig({
  test: {
    include: ["test/**/*.test.mjs"],
    environment: "node",
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
