import { defineConfig } from "vitest/config";

// A DOM (jsdom) for React; the network is real: tests/sdk/test_react.py starts the server.
export default defineConfig({
  esbuild: { jsx: "automatic" },
  test: {
    include: ["test/**/*.test.jsx"],
    environment: "jsdom",
    fileParallelism: false,
    testTimeout: 30_000,
  },
});
