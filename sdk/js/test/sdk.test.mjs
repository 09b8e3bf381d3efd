// The SDK's own behaviour against the real server: resources, pagination, naming, retries
// with idempotency keys, errors, webhook signatures of a real delivery, the CommonJS build.
import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { describe, test, expect } from "vitest";
import {
  PenguinMails,
  PenguinMailsError,
  NotFoundError,
  ConflictError,
  PermissionError,
  verifyWebhookSignature,
} from "@penguinmails/sdk";
import { API_KEY, BASE_URL } from "./env.mjs";

const client = new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL });

describe("contacts", () => {
  test("create, get, update, list page by page, delete; user data keys kept as given", async () => {
    const created = [];
    for (let i = 0; i < 5; i++) {
      created.push(
        await client.contacts.create({
          email: `page${i}@example.com`,
          firstName: `First${i}`,
          customFields: { favouriteColour: "blue", plan_name: "pro" },
          tags: ["sdk-pages"],
        }),
      );
    }
    const [first] = created;
    expect(first.id).toMatch(/^contact_/);
    expect(first.first_name).toBe("First0");
    // camelCase inside custom_fields is the user's own key, not renamed.
    expect(first.custom_fields).toEqual({ favouriteColour: "blue", plan_name: "pro" });

    const updated = await client.contacts.update(first.id, { lastName: "Last" });
    expect(updated.last_name).toBe("Last");
    expect((await client.contacts.get(first.id)).last_name).toBe("Last");

    const page = await client.contacts.list({ limit: 2, tag: "sdk-pages" });
    expect(page.items).toHaveLength(2);
    expect(page.has_more).toBe(true);
    const seen = [];
    for await (const contact of client.contacts.list({ limit: 2, tag: "sdk-pages" })) {
      seen.push(contact.id);
    }
    expect(new Set(seen)).toEqual(new Set(created.map((c) => c.id)));

    await client.contacts.delete(first.id);
    await expect(client.contacts.get(first.id)).rejects.toThrow(NotFoundError);
  });
});

describe("campaigns", () => {
  test("update, send, pause, resume, cancel; a wrong state is a ConflictError", async () => {
    const campaign = await client.campaigns.create({
      name: "Lifecycle",
      subject: "Hello",
      content: { html: "<p>Hello</p>" },
      recipients: [{ email: "a@example.com" }, { email: "b@example.com" }],
    });
    const renamed = await client.campaigns.update(campaign.id, { name: "Lifecycle 2" });
    expect(renamed.name).toBe("Lifecycle 2");
    const later = new Date(Date.now() + 3_600_000).toISOString();
    const scheduled = await client.campaigns.send(campaign.id, { sendAt: later });
    expect(scheduled.status).toBe("scheduled");
    expect((await client.campaigns.pause(campaign.id)).status).toBe("paused");
    expect(["scheduled", "sending"]).toContain((await client.campaigns.resume(campaign.id)).status);
    expect((await client.campaigns.cancel(campaign.id)).status).toBe("cancelled");
    const error = await client.campaigns.pause(campaign.id).catch((e) => e);
    expect(error).toBeInstanceOf(ConflictError);
    expect(error.status).toBe(409);
    const analytics = await client.analytics.campaign(campaign.id, { period: "7d" });
    expect(analytics.campaign_id).toBe(campaign.id);
    expect(analytics.period).toBe("7d");
    expect(typeof analytics.overview.sent).toBe("number");
  });

  test("trigger_sequence enrols a contact in a sequence", async () => {
    const sequence = await client.sequences.create({
      name: "Onboarding",
      steps: [{ subject: "Welcome", content: { html: "<p>Hi</p>" }, delay: { days: 0 } }],
    });
    const contact = await client.contacts.create({ email: "sequence@example.com" });
    const enrolled = await client.campaigns.trigger_sequence(contact.id, sequence.id);
    expect(enrolled.contact_id).toBe(contact.id);
    expect(enrolled.sequence_id).toBe(sequence.id);
    await expect(client.campaigns.triggerSequence(contact.id, "seq_nope")).rejects.toThrow(
      PenguinMailsError,
    );
  });
});

describe("sends", () => {
  test("an idempotency key makes a repeated send one message", async () => {
    const email = { to: "once@example.com", subject: "Once", content: "<p>once</p>" };
    const first = await client.emails.send(email, { idempotencyKey: "sdk-once-1" });
    const again = await client.emails.send(email, { idempotencyKey: "sdk-once-1" });
    expect(again.message_id).toBe(first.message_id);
    const other = await client.emails.send(email); // a key of its own: a second message
    expect(other.message_id).not.toBe(first.message_id);
    const reused = await client.emails
      .send({ ...email, subject: "Different" }, { idempotencyKey: "sdk-once-1" })
      .catch((e) => e);
    expect(reused).toBeInstanceOf(PenguinMailsError);
    expect([409, 422]).toContain(reused.status);
  });

  test("batch and sendBulk", async () => {
    const batch = await client.emails.batch({
      messages: [
        { to: "b1@example.com", subject: "One", content: "<p>1</p>" },
        { to: "b2@example.com", subject: "Two", content: "<p>2</p>" },
      ],
    });
    expect(batch.data).toHaveLength(2);
    expect(batch.data[0].message_id).toMatch(/^msg_/);
    const campaign = await client.campaigns.create({
      name: "Bulk",
      subject: "Bulk {{name}}",
      content: "<p>Hi {{name}}</p>",
    });
    const bulk = await client.emails.sendBulk({
      campaignId: campaign.id,
      recipients: [{ email: "bulk@example.com", personalization: { name: "John Doe" } }],
      batchSize: 100,
    });
    expect(bulk.campaign_id).toBe(campaign.id);
    expect(bulk.queued).toBe(1);
  });
});

describe("retries", () => {
  test("a 5xx is retried for a read, a send keeps one idempotency key across retries", async () => {
    const seen = [];
    let failures = 2;
    const flaky = async (url, init) => {
      seen.push({ method: init.method, key: init.headers["Idempotency-Key"] });
      if (failures-- > 0) return new Response("{}", { status: 503 });
      return fetch(url, init);
    };
    const retrying = new PenguinMails({
      apiKey: API_KEY,
      baseUrl: BASE_URL,
      fetch: flaky,
      retryDelay: 1,
    });
    await retrying.emails.send({ to: "retry@example.com", subject: "R", content: "<p>r</p>" });
    expect(seen).toHaveLength(3);
    expect(new Set(seen.map((s) => s.key)).size).toBe(1);
    expect(seen[0].key).toBeTruthy();

    failures = 1;
    seen.length = 0;
    const error = await retrying.campaigns
      .create({ name: "Not retried", subject: "x", content: "<p>x</p>" })
      .catch((e) => e);
    expect(error.status).toBe(503); // a POST without a key is not repeated
    expect(seen).toHaveLength(1);

    failures = 5;
    seen.length = 0;
    const bounded = new PenguinMails({
      apiKey: API_KEY,
      baseUrl: BASE_URL,
      fetch: flaky,
      retryDelay: 1,
      maxRetries: 1,
    });
    await expect(bounded.campaigns.list()).rejects.toThrow(PenguinMailsError);
    expect(seen).toHaveLength(2);
  });

  test("an unreachable server is a PenguinMailsError with status 0", async () => {
    const down = new PenguinMails({ apiKey: API_KEY, baseUrl: "http://127.0.0.1:9", maxRetries: 0 });
    const error = await down.campaigns.list().catch((e) => e);
    expect(error).toBeInstanceOf(PenguinMailsError);
    expect(error.code).toBe("NETWORK_ERROR");
    expect(error.status).toBe(0);
  });
});

describe("templates and AI", () => {
  test("templates round trip; AI calls reach their paths", async () => {
    const template = await client.templates.create({
      name: "sdk-welcome",
      subject: "Hi {{name}}",
      html: "<p>Hi {{name}}</p>",
    });
    expect(template.name).toBe("sdk-welcome");
    const rendered = await client.templates.render(template.id, { personalization: { name: "Ann" } });
    expect(rendered.subject).toBe("Hi Ann");
    const listed = await client.templates.list().all();
    expect(listed.map((t) => t.id)).toContain(template.id);
    // On a server without the AI endpoints this is the server's own 404, raised as such.
    const answer = await client.ai
      .optimizeContent({ content: { subject: "Sale", html: "<p>x</p>" } })
      .catch((e) => e);
    if (answer instanceof Error) expect(answer).toBeInstanceOf(NotFoundError);
    else expect(answer).toHaveProperty("optimized");
  });
});

describe("webhooks", () => {
  test("a real delivery verifies with both schemes; a tampered one does not", async () => {
    const received = [];
    const server = createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        received.push({ headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(200).end("ok");
      });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${server.address().port}/hook`;
      const hook = await client.webhooks.create({ url, events: ["email.*"] });
      expect(hook.secret).toMatch(/^whsec_/);
      const result = await client.webhooks.test(hook.id);
      expect(result.delivered).toBe(true);
      const [{ headers, body }] = received;

      expect(await verifyWebhookSignature(body, headers, hook.secret)).toBe(true);
      // The documentation's form: the X-PenguinMails-Signature value alone, the body as text.
      const simple = headers["x-penguinmails-signature"];
      expect(simple).toMatch(/^sha256=/);
      expect(await verifyWebhookSignature(body.toString("utf8"), simple, hook.secret)).toBe(true);
      // A Headers object (fetch, edge runtimes) works too.
      expect(await verifyWebhookSignature(body, new Headers(headers), hook.secret)).toBe(true);

      const tampered = Buffer.from(body.toString("utf8").replace("}", ',"x":1}'));
      expect(await verifyWebhookSignature(tampered, headers, hook.secret)).toBe(false);
      expect(await verifyWebhookSignature(tampered, simple, hook.secret)).toBe(false);
      expect(await verifyWebhookSignature(body, headers, "whsec_" + btoa("wrong"))).toBe(false);
      const later = Number(headers["webhook-timestamp"]) + 3600;
      expect(await verifyWebhookSignature(body, headers, hook.secret, { now: later })).toBe(false);

      // A secret of your own keys the standard scheme with its UTF-8 bytes.
      const mine = await client.webhooks.create({ url, secret: "my-own-secret-123456789" });
      await client.webhooks.test(mine.id);
      const last = received[received.length - 1];
      expect(await verifyWebhookSignature(last.body, last.headers, "my-own-secret-123456789")).toBe(
        true,
      );
      const all = await client.webhooks.list().all();
      expect(all.map((h) => h.id)).toEqual(expect.arrayContaining([hook.id, mine.id]));
      await client.webhooks.delete(mine.id);
    } finally {
      server.close();
    }
  });
});

describe("packaging", () => {
  test("the CommonJS build works with require()", () => {
    const script = `
      const sdk = require("@penguinmails/sdk");
      const client = new sdk.PenguinMails({ apiKey: "sk_test_x" });
      console.log(typeof sdk.verifyWebhookSignature, client.http.root,
        new sdk.ValidationError("m", { code: "C", status: 422 }) instanceof sdk.PenguinMailsError);
    `;
    const out = execFileSync(process.execPath, ["-e", script], {
      env: { ...process.env, PENGUINMAILS_BASE_URL: "http://example.test:8080/" },
    });
    expect(out.toString().trim()).toBe("function http://example.test:8080/api/v1 true");
  });

  test("a publishable key reads but cannot write", async () => {
    const created = await client.http.request("POST", "/api-keys", {
      body: { type: "publishable" },
    });
    const key = created.key;
    expect(key).toMatch(/^pk_test_/);
    const browser = new PenguinMails({ apiKey: key, baseUrl: BASE_URL });
    const page = await browser.campaigns.list();
    expect(Array.isArray(page.items)).toBe(true);
    const error = await browser.campaigns.create({ name: "x", content: "<p>x</p>" }).catch((e) => e);
    expect(error).toBeInstanceOf(PermissionError);
    expect(error.status).toBe(403);
  });
});
