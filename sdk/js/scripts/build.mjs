// ESM and CommonJS builds with declarations, with the compiler alone: tsc twice, and a
// package.json in dist/cjs so Node reads those .js files as CommonJS inside a "module" package.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync("dist", { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", project], { stdio: "inherit" });
  } catch {
    console.error(`build: tsc -p ${project} failed`);
    process.exit(1);
  }
}
mkdirSync("dist/cjs", { recursive: true });
writeFileSync("dist/cjs/package.json", JSON.stringify({ type: "commonjs" }) + "\n");
