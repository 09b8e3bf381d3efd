/**
 * Verifying a webhook request with WebCrypto (Node 18+, browsers, edge runtimes), for both
 * signatures the server sends (docs/webhooks.md):
 *
 * - `webhook-signature` (Standard Webhooks): `v1,<base64>` HMAC-SHA256 of
 *   `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64 part of a `whsec_` secret
 *   (or a secret's UTF-8 bytes); two during a rotation. It covers the timestamp, so a stale
 *   request (a replay) is refused.
 * - `X-PenguinMails-Signature`: `sha256=<hex>` HMAC-SHA256 of the raw body keyed with the
 *   secret string; also the documentation's `verifyWebhookSignature(payload, signature,
 *   secret)` form, where the header's value is passed as a string.
 *
 * With headers that carry `webhook-signature`, that one decides (it is the one that resists
 * replay and spans a rotation); otherwise X-PenguinMails-Signature does.
 */

export type WebhookHeaders =
  | Record<string, string | string[] | undefined>
  | { get(name: string): string | null };

export interface VerifyOptions {
  /** How old (or far in the future) webhook-timestamp may be; 300 seconds by default. */
  toleranceSeconds?: number;
  /** The current time in Unix seconds (for tests). */
  now?: number;
}

const encoder = new TextEncoder();

/** A copy as a plain ArrayBuffer, the type WebCrypto takes everywhere. */
function buffer(data: Uint8Array): ArrayBuffer {
  return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as { get?: unknown }).get === "function") {
    return (headers as { get(name: string): string | null }).get(name) ?? undefined;
  }
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name) return Array.isArray(value) ? value.join(" ") : value;
  }
  return undefined;
}

function bytes(payload: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof payload === "string") return encoder.encode(payload);
  return payload instanceof Uint8Array ? payload : new Uint8Array(payload);
}

function fromBase64(text: string): Uint8Array | null {
  try {
    const raw = atob(text);
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

async function hmac(key: Uint8Array, ...parts: Uint8Array[]): Promise<Uint8Array> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new Error("verifyWebhookSignature needs WebCrypto (globalThis.crypto.subtle)");
  const imported = await subtle.importKey("raw", buffer(key), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const message = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    message.set(part, offset);
    offset += part.length;
  }
  return new Uint8Array(await subtle.sign("HMAC", imported, buffer(message)));
}

/** Constant-time comparison (the time depends on the length only). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function hex(data: Uint8Array): string {
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

function standardKey(secret: string): Uint8Array {
  if (secret.startsWith("whsec_")) {
    const key = fromBase64(secret.slice("whsec_".length));
    if (key) return key;
  }
  return encoder.encode(secret);
}

/**
 * True if `payload` (the raw request body, exactly as received) is signed with `secret`.
 * `headers` is the request's headers (a plain object with any case, or a Headers), or the
 * X-PenguinMails-Signature value itself.
 */
export async function verifyWebhookSignature(
  payload: string | Uint8Array | ArrayBuffer,
  headers: WebhookHeaders | string,
  secret: string,
  options: VerifyOptions = {},
): Promise<boolean> {
  const body = bytes(payload);
  const simpleHeader =
    typeof headers === "string" ? headers : header(headers, "x-penguinmails-signature");
  const standard = typeof headers === "string" ? undefined : header(headers, "webhook-signature");
  if (standard !== undefined && typeof headers !== "string") {
    const id = header(headers, "webhook-id") ?? "";
    const timestamp = header(headers, "webhook-timestamp") ?? "";
    const now = options.now ?? Math.floor(Date.now() / 1000);
    const tolerance = options.toleranceSeconds ?? 300;
    if (!id || !/^\d+$/.test(timestamp) || Math.abs(now - Number(timestamp)) > tolerance) {
      return false;
    }
    const expected = await hmac(standardKey(secret), encoder.encode(`${id}.${timestamp}.`), body);
    return standard.split(" ").some((candidate) => {
      const [version, signature] = candidate.split(",", 2);
      const given = version === "v1" && signature ? fromBase64(signature) : null;
      return given !== null && same(given, expected);
    });
  }
  if (!simpleHeader) return false;
  const expected = `sha256=${hex(await hmac(encoder.encode(secret), body))}`;
  return same(encoder.encode(simpleHeader.trim()), encoder.encode(expected));
}
