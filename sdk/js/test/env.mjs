// The server and keys tests/sdk/test_js.py started this run with.
export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through pytest tests/sdk`);
  return value;
}

export const BASE_URL = env("PENGUINMAILS_BASE_URL");
export const API_KEY = env("PENGUINMAILS_API_KEY");
