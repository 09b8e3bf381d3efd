// The product documentation's JavaScript examples (integration-api-overview.md), as written
// there but for the base URL, run against the real server.
import { describe, test, expect, beforeEach, vi } from "vitest";
import {
  PenguinMails,
  PenguinMailsError,
  ValidationError,
  RateLimitError,
  AuthenticationError,
} from "@penguinmails/sdk";
import { API_KEY, BASE_URL, env } from "./env.mjs";

describe("SDK usage", () => {
  test("create a campaign, then send an email with tracking", async () => {
    const client = new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL });

    const campaign = await client.campaigns.create({
      name: "Welcome Series",
      subject: "Welcome to PenguinMails!",
      content: {
        html: "<h1>Welcome!</h1><p>Thank you for joining us.</p>",
        text: "Welcome! Thank you for joining us.",
      },
    });
    expect(campaign.id).toMatch(/^campaign_/);

    const email = {
      to: "user@example.com",
      subject: "Test Email",
      content: "<p>Hello from PenguinMails!</p>",
      tracking: { track_opens: true, track_clicks: true },
    };
    const result = await client.emails.send(email);
    expect(result.message_id).toMatch(/^msg_/);
    expect(result.status).toBe("queued");
    const message = await client.messages.get(result.message_id);
    expect(message.id).toBe(result.message_id);
  });
});

class PenguinMailsTestDataGenerator {
  constructor(client) {
    this.client = client;
  }

  async generateTestCampaigns(count = 5) {
    const campaigns = [];

    for (let i = 0; i < count; i++) {
      const campaignData = {
        name: `Test Campaign ${i + 1}`,
        subject: `Test Subject ${i + 1}`,
        content: {
          html: `<h1>Test Email ${i + 1}</h1><p>This is test content.</p>`,
          text: `Test Email ${i + 1} - This is test content.`,
        },
        recipients: this.generateTestRecipients(50),
        settings: {
          analyticsEnabled: true,
          aiOptimization: true,
          trackOpens: true,
          trackClicks: true,
        },
      };

      const campaign = await this.client.campaigns.create(campaignData);
      campaigns.push(campaign);
    }

    return campaigns;
  }

  generateTestRecipients(count) {
    const recipients = [];
    for (let i = 0; i < count; i++) {
      recipients.push({
        email: `test${i}@example.com`,
        personalization: {
          name: `Test User ${i}`,
          company: `Test Company ${i}`,
        },
      });
    }
    return recipients;
  }
}

describe("Test Data Generator", () => {
  test("five campaigns of fifty recipients, camelCase settings sent as the API's", async () => {
    const client = new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL });
    const campaigns = await new PenguinMailsTestDataGenerator(client).generateTestCampaigns();
    expect(campaigns).toHaveLength(5);
    for (const [i, campaign] of campaigns.entries()) {
      expect(campaign.name).toBe(`Test Campaign ${i + 1}`);
      expect(campaign.recipient_count).toBe(50);
      // ai_optimization defaults to false: true here proves the camelCase key arrived.
      expect(campaign.settings).toMatchObject({
        analytics_enabled: true,
        ai_optimization: true,
        track_opens: true,
        track_clicks: true,
      });
    }
    const stored = await client.campaigns.get(campaigns[4].id);
    expect(stored.settings.ai_optimization).toBe(true);
  });
});

describe("PenguinMails API", () => {
  let client;

  beforeEach(() => {
    client = new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL });
  });

  test("should create campaign successfully", async () => {
    const campaignData = {
      name: "Test Campaign",
      subject: "Test Subject",
      content: { html: "<h1>Test</h1>", text: "Test" },
      recipients: [{ email: "test@example.com" }],
    };

    const campaign = await client.campaigns.create(campaignData);

    expect(campaign.id).toBeDefined();
    expect(campaign.name).toBe(campaignData.name);
    expect(campaign.status).toBe("draft");
  });

  test("should handle validation errors", async () => {
    const invalidCampaignData = {
      name: "", // Invalid: empty name
      subject: "Test Subject",
      content: { html: "<h1>Test</h1>", text: "Test" },
      recipients: [],
    };

    await expect(client.campaigns.create(invalidCampaignData)).rejects.toThrow(ValidationError);
  });
});

async function sendCampaignWithRetry(client, campaignData, maxRetries = 3) {
  for (let attempt = 0; attempt < maxRetries; attempt++) {
    try {
      return await client.campaigns.create(campaignData);
    } catch (error) {
      if (error instanceof ValidationError) {
        console.error("Validation failed:", error.details);
        return null; // Don't retry validation errors
      }

      if (error instanceof RateLimitError) {
        if (attempt === maxRetries - 1) {
          throw error;
        }
        const waitTime = error.retryAfter || Math.pow(2, attempt) * 1000;
        console.log(`Rate limited. Retrying in ${waitTime}ms...`);
        await new Promise((resolve) => setTimeout(resolve, waitTime));
        continue;
      }

      if (error instanceof AuthenticationError) {
        console.error("Authentication failed:", error.message);
        return null;
      }

      throw error; // Re-throw unexpected errors
    }
  }
}

describe("Error handling", () => {
  const campaignData = { name: "Retried", subject: "Hi", content: "<p>Hi</p>" };

  test("the retry loop waits out a real 429 and then creates the campaign", async () => {
    // A server with a tiny limit and a two-second window, on an account of its own.
    const options = {
      apiKey: env("PENGUINMAILS_THROTTLED_API_KEY"),
      baseUrl: env("PENGUINMAILS_THROTTLED_BASE_URL"),
    };
    // Use up this window's allowance (no automatic retries, to see the 429 itself).
    const probe = new PenguinMails({ ...options, maxRetries: 0 });
    let limited = null;
    for (let i = 0; i < 50 && !limited; i++) {
      await probe.campaigns.list().catch((error) => {
        if (error instanceof RateLimitError) limited = error;
        else throw error;
      });
    }
    expect(limited).toBeInstanceOf(RateLimitError);
    expect(limited).toBeInstanceOf(PenguinMailsError);
    expect(limited.status).toBe(429);
    expect(limited.code).toBe("RATE_LIMITED");
    expect(limited.requestId).toMatch(/^req_/);
    expect(limited.retryAfter).toBeGreaterThan(0);
    expect(limited.retryAfter).toBeLessThanOrEqual(2000);

    // A create is not repeated by the SDK (no idempotency key): the loop meets the 429,
    // waits retryAfter milliseconds and tries again.
    const log = vi.spyOn(console, "log");
    const client = new PenguinMails(options);
    const campaign = await sendCampaignWithRetry(client, campaignData, 5);
    expect(campaign.name).toBe("Retried");
    expect(log.mock.calls.flat().join("\n")).toMatch(/Rate limited\. Retrying in \d+ms/);
    log.mockRestore();
  });

  test("reads are retried after Retry-After by the SDK itself", async () => {
    const options = {
      apiKey: env("PENGUINMAILS_THROTTLED_API_KEY"),
      baseUrl: env("PENGUINMAILS_THROTTLED_BASE_URL"),
    };
    const probe = new PenguinMails({ ...options, maxRetries: 0 });
    let limited = false;
    for (let i = 0; i < 50 && !limited; i++) {
      await probe.campaigns.list().catch((error) => {
        if (error instanceof RateLimitError) limited = true;
        else throw error;
      });
    }
    expect(limited).toBe(true);
    const page = await new PenguinMails(options).campaigns.list();
    expect(page.items.map((c) => c.name)).toContain("Retried");
  });

  test("validation errors come back with details and stop the loop", async () => {
    const client = new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL });
    const error = await client.campaigns.create({ ...campaignData, name: "" }).catch((e) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error.code).toBe("VALIDATION_ERROR");
    expect(error.status).toBe(422);
    expect(error.requestId).toMatch(/^req_/);
    expect(error.details.map((d) => d.field)).toContain("name");
    expect(await sendCampaignWithRetry(client, { ...campaignData, name: "" })).toBeNull();
  });

  test("a wrong key is an AuthenticationError", async () => {
    const client = new PenguinMails({ apiKey: "sk_test_not_a_real_key", baseUrl: BASE_URL });
    const error = await client.campaigns.list().catch((e) => e);
    expect(error).toBeInstanceOf(AuthenticationError);
    expect(error.status).toBe(401);
    expect(await sendCampaignWithRetry(client, campaignData)).toBeNull();
  });
});
