/**
 * @penguinmails/sdk: the PenguinMails API from JavaScript and TypeScript.
 *
 *   const client = new PenguinMails({ apiKey: "sk_test_...", baseUrl: "http://127.0.0.1:8080" });
 *   const campaign = await client.campaigns.create({ name, subject, content });
 *
 * Answers are the API's objects as the API names them (`campaign.id`, `result.message_id`);
 * request fields may be written in snake_case or camelCase (see naming.ts).
 */
import {
  HttpClient,
  type OperationId,
  type Page,
  PageIterator,
  type PenguinMailsOptions,
} from "./client.js";
import { PenguinMailsError } from "./errors.js";
import type { Bodies, Responses } from "./generated.js";
import type { Input } from "./naming.js";

export * from "./errors.js";
export type * from "./generated.js";
export { OPERATIONS, USER_DATA_FIELDS } from "./generated.js";
export { PageIterator, type Page, type PenguinMailsOptions, type RequestOptions } from "./client.js";
export { type Input, snakeCase, toApi } from "./naming.js";
export { verifyWebhookSignature, type VerifyOptions, type WebhookHeaders } from "./webhooks.js";

type Body<K extends OperationId> = K extends keyof Bodies ? Input<Bodies[K]> : never;
type Answer<K extends OperationId> = K extends keyof Responses ? Responses[K] : unknown;
type ItemOf<K extends OperationId> = Answer<K> extends Page<infer T> ? T : never;

export interface ListParams {
  /** Page size (the server's default and maximum apply). */
  limit?: number;
  cursor?: string;
  [filter: string]: string | number | boolean | undefined;
}

export interface SendOptions {
  /** The server runs a send at most once per key; one is generated unless given. */
  idempotencyKey?: string;
}

class Resource {
  constructor(protected readonly http: HttpClient) {}

  protected call<K extends OperationId>(
    id: K,
    params?: Record<string, string>,
    body?: Body<K>,
    extra: { query?: Record<string, unknown>; idempotencyKey?: string } = {},
  ): Promise<Answer<K>> {
    return this.http.operation<Answer<K>>(id, { params, body, ...extra });
  }

  protected paged<K extends OperationId>(
    id: K,
    query: ListParams = {},
    params?: Record<string, string>,
  ): PageIterator<ItemOf<K>> {
    return new PageIterator<ItemOf<K>>((cursor) =>
      this.http.operation<Page<ItemOf<K>>>(id, {
        params,
        query: cursor === undefined ? query : { ...query, cursor },
      }),
    );
  }
}

export class Campaigns extends Resource {
  create(campaign: Body<"create_campaign">) {
    return this.call("create_campaign", undefined, campaign);
  }
  get(id: string) {
    return this.call("get_campaign", { id });
  }
  list(params?: ListParams) {
    return this.paged("list_campaigns", params);
  }
  update(id: string, changes: Body<"update_campaign">) {
    return this.call("update_campaign", { id }, changes);
  }
  /** Start sending (now, or at `send_at`); needs the starter tier. */
  send(id: string, options: Body<"send_campaign"> = {}) {
    return this.call("send_campaign", { id }, options);
  }
  pause(id: string) {
    return this.call("pause_campaign", { id });
  }
  resume(id: string) {
    return this.call("resume_campaign", { id });
  }
  cancel(id: string) {
    return this.call("cancel_campaign", { id });
  }
  /** Enrol a contact in a sequence (by the sequence's id or name). */
  trigger_sequence(contactId: string, sequenceId: string, options: { reEnroll?: boolean } = {}) {
    return this.call(
      "trigger_sequence",
      { id: contactId },
      {
        sequence: sequenceId,
        re_enroll: options.reEnroll ?? false,
      },
    );
  }
  triggerSequence(contactId: string, sequenceId: string, options: { reEnroll?: boolean } = {}) {
    return this.trigger_sequence(contactId, sequenceId, options);
  }
}

export class Emails extends Resource {
  send(email: Body<"send_email">, options: SendOptions = {}) {
    return this.call("send_email", undefined, email, options);
  }
  sendBulk(request: Body<"send_bulk">, options: SendOptions = {}) {
    return this.call("send_bulk", undefined, request, options);
  }
  batch(request: Body<"send_batch">, options: SendOptions = {}) {
    return this.call("send_batch", undefined, request, options);
  }
}

export class Contacts extends Resource {
  create(contact: Body<"create_contact">) {
    return this.call("create_contact", undefined, contact);
  }
  get(id: string) {
    return this.call("get_contact", { id });
  }
  list(params?: ListParams & { tag?: string }) {
    return this.paged("list_contacts", params);
  }
  update(id: string, changes: Body<"update_contact">) {
    return this.call("update_contact", { id }, changes);
  }
  delete(id: string) {
    return this.call("delete_contact", { id });
  }
}

export class Analytics extends Resource {
  /** A campaign's numbers; `period` like "7d", "24h" or "all". */
  campaign(id: string, options: { period?: string; interval?: "hour" | "day" } = {}) {
    return this.call("campaign_analytics", { id }, undefined, { query: options });
  }
  tag(tag: string, options: { period?: string; interval?: "hour" | "day" } = {}) {
    return this.call("tag_analytics", { tag }, undefined, { query: options });
  }
}

export class Webhooks extends Resource {
  /** Register an endpoint; the answer carries its signing secret, shown this once. */
  create(webhook: Body<"create_webhook">) {
    return this.call("create_webhook", undefined, webhook);
  }
  get(id: string) {
    return this.call("get_webhook", { id });
  }
  list(params?: ListParams) {
    return this.paged("list_webhooks", params);
  }
  update(id: string, changes: Body<"update_webhook">) {
    return this.call("update_webhook", { id }, changes);
  }
  delete(id: string) {
    return this.call("delete_webhook", { id });
  }
  enable(id: string) {
    return this.call("enable_webhook", { id });
  }
  disable(id: string) {
    return this.call("disable_webhook", { id });
  }
  rotateSecret(id: string, options: Body<"rotate_webhook_secret"> = {}) {
    return this.call("rotate_webhook_secret", { id }, options);
  }
  deliveries(id: string, params?: ListParams & { status?: string }) {
    return this.paged("list_webhook_deliveries", params, { id });
  }
  /** Send a signed test event to the endpoint now, and report how it answered. */
  test(id: string) {
    return this.call("test_webhook", { id });
  }
}

export class Templates extends Resource {
  create(template: Body<"create_template">) {
    return this.call("create_template", undefined, template);
  }
  get(id: string) {
    return this.call("get_template", { id });
  }
  list(params?: ListParams) {
    return this.paged("list_templates", params);
  }
  update(id: string, changes: Body<"update_template">) {
    return this.call("update_template", { id }, changes);
  }
  delete(id: string) {
    return this.call("delete_template", { id });
  }
  versions(id: string, params?: ListParams) {
    return this.paged("list_template_versions", params, { id });
  }
  version(id: string, version: number) {
    return this.call("get_template_version", { id, version: String(version) });
  }
  render(id: string, request: Body<"render_template"> = {}) {
    return this.call("render_template", { id }, request);
  }
}

export class Sequences extends Resource {
  create(sequence: Body<"create_sequence">) {
    return this.call("create_sequence", undefined, sequence);
  }
  get(id: string) {
    return this.call("get_sequence", { id });
  }
  list(params?: ListParams) {
    return this.paged("list_sequences", params);
  }
  update(id: string, changes: Body<"update_sequence">) {
    return this.call("update_sequence", { id }, changes);
  }
  archive(id: string) {
    return this.call("archive_sequence", { id });
  }
  enroll(id: string, enrollment: Body<"enroll">) {
    return this.call("enroll", { id }, enrollment);
  }
  enrollments(id: string, params?: ListParams & { status?: string }) {
    return this.paged("list_enrollments", params, { id });
  }
}

export class Messages extends Resource {
  get(id: string) {
    return this.call("get_message", { id });
  }
  list(params?: ListParams) {
    return this.paged("list_messages", params);
  }
}

/**
 * The AI endpoints (POST /api/v1/ai/optimize-content and /ai/analyze-contact) need a server
 * version that has them; an older server answers NotFoundError.
 */
export class AI extends Resource {
  optimizeContent(request: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.http.request("POST", "/ai/optimize-content", { body: request });
  }
  analyzeContact(request: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.http.request("POST", "/ai/analyze-contact", { body: request });
  }
}

export class PenguinMails {
  readonly campaigns: Campaigns;
  readonly emails: Emails;
  readonly contacts: Contacts;
  readonly analytics: Analytics;
  readonly webhooks: Webhooks;
  readonly templates: Templates;
  readonly sequences: Sequences;
  readonly messages: Messages;
  readonly ai: AI;
  /** The HTTP core, for an endpoint without a method here: `client.http.request("GET", "/health")`. */
  readonly http: HttpClient;

  constructor(options: PenguinMailsOptions) {
    this.http = new HttpClient(options);
    this.campaigns = new Campaigns(this.http);
    this.emails = new Emails(this.http);
    this.contacts = new Contacts(this.http);
    this.analytics = new Analytics(this.http);
    this.webhooks = new Webhooks(this.http);
    this.templates = new Templates(this.http);
    this.sequences = new Sequences(this.http);
    this.messages = new Messages(this.http);
    this.ai = new AI(this.http);
  }
}

export default PenguinMails;
export { PenguinMailsError };
