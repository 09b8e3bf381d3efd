/**
 * The HTTP core: one request, its envelope unwrapped, its failure raised as the right error,
 * and bounded retries with backoff where repeating the call is safe.
 */
import { errorFor, PenguinMailsError, RateLimitError } from "./errors.js";
import { OPERATIONS } from "./generated.js";
import { toApi } from "./naming.js";

export type OperationId = keyof typeof OPERATIONS;

export interface PenguinMailsOptions {
  /** A secret key (sk_live_/sk_test_) on a server; a publishable key (pk_) in a browser. */
  apiKey: string;
  /**
   * The server: its origin (`http://127.0.0.1:8080`, to which /api/v1 is added) or the API's
   * root itself (anything ending in /v1). Default: PENGUINMAILS_BASE_URL where there is an
   * environment, else the API's default listen address, http://127.0.0.1:8080.
   */
  baseUrl?: string;
  /** Retries of a 429, a 5xx or a network error, for calls safe to repeat; default 2. */
  maxRetries?: number;
  /** The first backoff in ms (doubled each retry, with jitter); default 500. */
  retryDelay?: number;
  /** The longest wait before a retry in ms, Retry-After included; default 30000. */
  maxRetryDelay?: number;
  /** Per attempt, in ms; default 30000. */
  timeout?: number;
  /** A fetch implementation; default the platform's. */
  fetch?: typeof fetch;
  /**
   * A secret key (sk_) in a web page is anyone's who opens it, so the client refuses one
   * there unless this is true (a test in a simulated DOM, an internal tool you trust).
   */
  dangerouslyAllowBrowser?: boolean;
}

export interface RequestOptions {
  params?: Record<string, string>;
  query?: Record<string, unknown>;
  body?: unknown;
  /** Sent as Idempotency-Key: the server runs the request at most once per key. */
  idempotencyKey?: string;
}

const DEFAULT_BASE_URL = "http://127.0.0.1:8080";

function environmentBaseUrl(): string | undefined {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process
    ?.env;
  return env?.PENGUINMAILS_BASE_URL || undefined;
}

export function apiRoot(baseUrl: string): string {
  const trimmed = baseUrl.replace(/\/+$/, "");
  return /\/v1$/.test(trimmed) ? trimmed : `${trimmed}/api/v1`;
}

export function newIdempotencyKey(): string {
  const crypto = globalThis.crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  const random = new Uint8Array(16);
  crypto.getRandomValues(random);
  return Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class HttpClient {
  readonly root: string;
  private readonly apiKey: string;
  private readonly maxRetries: number;
  private readonly retryDelay: number;
  private readonly maxRetryDelay: number;
  private readonly timeout: number;
  private readonly fetcher: typeof fetch;

  constructor(options: PenguinMailsOptions) {
    if (!options || !options.apiKey) {
      throw new PenguinMailsError("apiKey is required", { code: "MISSING_API_KEY", status: 0 });
    }
    const inBrowser = typeof window !== "undefined" && typeof document !== "undefined";
    if (inBrowser && options.apiKey.startsWith("sk_") && !options.dangerouslyAllowBrowser) {
      throw new PenguinMailsError(
        "a secret key (sk_) in a browser is public: use a publishable key (pk_) there, " +
          "or set dangerouslyAllowBrowser",
        { code: "SECRET_KEY_IN_BROWSER", status: 0 },
      );
    }
    this.apiKey = options.apiKey;
    this.root = apiRoot(options.baseUrl ?? environmentBaseUrl() ?? DEFAULT_BASE_URL);
    this.maxRetries = Math.max(0, options.maxRetries ?? 2);
    this.retryDelay = options.retryDelay ?? 500;
    this.maxRetryDelay = options.maxRetryDelay ?? 30_000;
    this.timeout = options.timeout ?? 30_000;
    const fetcher = options.fetch ?? globalThis.fetch;
    if (!fetcher) {
      throw new PenguinMailsError("no fetch: pass options.fetch on this platform", {
        code: "NO_FETCH",
        status: 0,
      });
    }
    this.fetcher = fetcher.bind(globalThis);
  }

  /** Call an operation of the API (by its OpenAPI operationId). */
  operation<T>(id: OperationId, options: RequestOptions = {}): Promise<T> {
    const op = OPERATIONS[id];
    const path = op.path.replace(/\{(\w+)\}/g, (_, name: string) => {
      const value = options.params?.[name];
      if (value === undefined || value === "") {
        throw new PenguinMailsError(`${name} is required`, { code: "VALIDATION_ERROR", status: 0 });
      }
      return encodeURIComponent(value);
    });
    const idempotencyKey = op.idempotencyKey
      ? (options.idempotencyKey ?? newIdempotencyKey())
      : undefined;
    return this.request<T>(op.method, path, { ...options, idempotencyKey });
  }

  /** Any path under the API root (for endpoints newer than this SDK's generated table). */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const url = new URL(this.root + path);
    for (const [name, value] of Object.entries(toApi(options.query ?? {}) as object)) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.apiKey}`,
      Accept: "application/json",
    };
    let body: string | undefined;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(toApi(options.body));
    }
    if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
    // Repeating is safe for reads and deletes, and for a request the server dedupes by key.
    const retryable = ["GET", "HEAD", "PUT", "DELETE"].includes(method) || !!options.idempotencyKey;

    for (let attempt = 0; ; attempt++) {
      let error: PenguinMailsError;
      try {
        return await this.once<T>(method, url, headers, body);
      } catch (caught) {
        if (!(caught instanceof PenguinMailsError)) throw caught;
        error = caught;
      }
      const transient = error.status === 0 || error.status === 429 || error.status >= 500;
      if (!retryable || !transient || attempt >= this.maxRetries) throw error;
      await sleep(this.backoff(attempt, error));
    }
  }

  private backoff(attempt: number, error: PenguinMailsError): number {
    const exponential = this.retryDelay * 2 ** attempt * (0.75 + Math.random() / 2);
    const hinted = error instanceof RateLimitError ? error.retryAfter : null;
    return Math.min(this.maxRetryDelay, hinted ?? exponential);
  }

  private async once<T>(
    method: string,
    url: URL,
    headers: Record<string, string>,
    body: string | undefined,
  ): Promise<T> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeout);
    let response: Response;
    let text: string;
    try {
      response = await this.fetcher(url, { method, headers, body, signal: controller.signal });
      text = await response.text();
    } catch (cause) {
      const timedOut = controller.signal.aborted;
      throw new PenguinMailsError(
        timedOut ? `no answer within ${this.timeout} ms` : `request failed: ${String(cause)}`,
        { code: timedOut ? "TIMEOUT" : "NETWORK_ERROR", status: 0, cause },
      );
    } finally {
      clearTimeout(timer);
    }
    const answerHeaders: Record<string, string> = {};
    response.headers.forEach((value, name) => {
      answerHeaders[name.toLowerCase()] = value;
    });
    let parsed: { success?: boolean; data?: unknown; error?: never } | null = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (!response.ok || parsed?.success === false) {
      throw errorFor(response.status, parsed?.error ?? null, answerHeaders);
    }
    if (parsed === null || !("data" in parsed)) {
      throw new PenguinMailsError(`unexpected answer (HTTP ${response.status})`, {
        code: "BAD_RESPONSE",
        status: response.status,
        headers: answerHeaders,
      });
    }
    return parsed.data as T;
  }
}

/** One page of a list: the items, and the cursor of the next page. */
export interface Page<T> {
  items: T[];
  has_more: boolean;
  next_cursor: string | null;
}

/**
 * A list call: `await` it for the first page, or `for await` it for every item, page after
 * page (each fetched as the previous one runs out).
 */
export class PageIterator<T> implements AsyncIterable<T>, PromiseLike<Page<T>> {
  constructor(private readonly fetchPage: (cursor: string | undefined) => Promise<Page<T>>) {}

  then<A = Page<T>, B = never>(
    onFulfilled?: ((page: Page<T>) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    return this.fetchPage(undefined).then(onFulfilled, onRejected);
  }

  catch<B = never>(
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<Page<T> | B> {
    return this.then(undefined, onRejected);
  }

  finally(onFinally?: (() => void) | null): Promise<Page<T>> {
    return this.fetchPage(undefined).finally(onFinally);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    let cursor: string | undefined;
    for (;;) {
      const page = await this.fetchPage(cursor);
      yield* page.items;
      if (!page.has_more || !page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  /** Every item of every page, in one array. */
  async all(): Promise<T[]> {
    const items: T[] = [];
    for await (const item of this) items.push(item);
    return items;
  }
}
