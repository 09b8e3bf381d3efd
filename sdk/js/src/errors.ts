/**
 * Every failure the SDK raises: a PenguinMailsError, or one of its subclasses chosen by the
 * HTTP status, each keeping the API's `code`, the `requestId` to quote and the `status`.
 */

import type { ErrorDetail } from "./generated.js";

export interface ErrorInit {
  code: string;
  status: number;
  requestId?: string | null;
  details?: ErrorDetail[];
  headers?: Record<string, string>;
  cause?: unknown;
}

export class PenguinMailsError extends Error {
  /** The API's error code: VALIDATION_ERROR, RATE_LIMITED, NOT_FOUND, ... */
  readonly code: string;
  /** The HTTP status; 0 when no answer arrived (network error, timeout). */
  readonly status: number;
  /** The request id to quote to the operator (the server logs under it). */
  readonly requestId: string | null;
  /** Which fields are wrong, for a validation error (empty otherwise). */
  readonly details: ErrorDetail[];
  readonly headers: Record<string, string>;

  constructor(message: string, init: ErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.status = init.status;
    this.requestId = init.requestId ?? null;
    this.details = init.details ?? [];
    this.headers = init.headers ?? {};
  }
}

/** 400 or 422: the request is malformed or a field is invalid; `details` name each field. */
export class ValidationError extends PenguinMailsError {}

/** 401: missing, malformed, revoked or expired credentials. */
export class AuthenticationError extends PenguinMailsError {}

/** 403: this key may not do this (a publishable key writing, a call above the plan's tier). */
export class PermissionError extends PenguinMailsError {}

/** 404: no such resource (or another account's), or an endpoint this server does not have. */
export class NotFoundError extends PenguinMailsError {}

/** 409: the request conflicts with the resource's state (or reuses an idempotency key). */
export class ConflictError extends PenguinMailsError {}

/** 429: over the rate limit. */
export class RateLimitError extends PenguinMailsError {
  /** Milliseconds to wait before trying again (from the Retry-After header), or null. */
  readonly retryAfter: number | null;

  constructor(message: string, init: ErrorInit & { retryAfter: number | null }) {
    super(message, init);
    this.retryAfter = init.retryAfter;
  }
}

/** The error for an answer with this status and error body. */
export function errorFor(
  status: number,
  body: { code?: string; message?: string; details?: ErrorDetail[]; request_id?: string } | null,
  headers: Record<string, string>,
): PenguinMailsError {
  const init: ErrorInit = {
    code: body?.code ?? `HTTP_${status}`,
    status,
    requestId: body?.request_id ?? headers["x-request-id"] ?? null,
    details: body?.details ?? [],
    headers,
  };
  const message = body?.message ?? `HTTP ${status}`;
  if (status === 429) {
    return new RateLimitError(message, { ...init, retryAfter: retryAfterMs(headers) });
  }
  if (status === 400 || status === 422) return new ValidationError(message, init);
  if (status === 401) return new AuthenticationError(message, init);
  if (status === 403) return new PermissionError(message, init);
  if (status === 404) return new NotFoundError(message, init);
  if (status === 409) return new ConflictError(message, init);
  return new PenguinMailsError(message, init);
}

/** Retry-After (seconds, or an HTTP date) in milliseconds; null when absent or unreadable. */
export function retryAfterMs(headers: Record<string, string>): number | null {
  const value = headers["retry-after"];
  if (value === undefined) return null;
  if (/^\d+(\.\d+)?$/.test(value.trim())) return Math.round(Number(value) * 1000);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, when - Date.now());
}
