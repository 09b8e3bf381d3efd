// Compile-time checks of the SDK's types (tsc --noEmit -p tsconfig.test.json, run by
// tests/sdk/test_js.py): the documentation's examples type-check as written, and mistakes
// marked @ts-expect-error do not (tsc fails if one of them starts compiling).
import {
  PenguinMails,
  RateLimitError,
  ValidationError,
  type Campaign,
  type SendResult,
} from "@penguinmails/sdk";

export async function examples(client: PenguinMails): Promise<void> {
  const campaign: Campaign = await client.campaigns.create({
    name: "Test Campaign 1",
    subject: "Test Subject 1",
    content: { html: "<h1>Test</h1>", text: "Test" },
    recipients: [{ email: "test0@example.com", personalization: { name: "Test User 0" } }],
    settings: { analyticsEnabled: true, aiOptimization: true, trackOpens: true, track_clicks: true },
  });
  const status: "draft" | "scheduled" | "sending" | "paused" | "completed" | "cancelled" =
    campaign.status;
  void status;

  const result: SendResult = await client.emails.send({
    to: "user@example.com",
    subject: "Test Email",
    content: "<p>Hello from PenguinMails!</p>",
    tracking: { track_opens: true, trackClicks: true },
  });
  const id: string = result.message_id;
  void id;

  await client.contacts.create({
    email: "a@example.com",
    firstName: "Ann",
    custom_fields: { anyKey: 1 },
  });
  for await (const contact of client.contacts.list({ limit: 10 })) {
    const email: string = contact.email;
    void email;
  }
  const analytics = await client.analytics.campaign(campaign.id, { period: "7d" });
  const sent: number = analytics.overview.sent;
  void sent;

  try {
    await client.campaigns.create({ name: "", content: "<p>x</p>" });
  } catch (error) {
    if (error instanceof ValidationError) console.log(error.details[0]?.field);
    if (error instanceof RateLimitError) console.log(error.retryAfter, error.requestId);
  }

  // @ts-expect-error: a campaign has no "colour" field
  await client.campaigns.create({ name: "x", content: "<p>x</p>", colour: "red" });
  // @ts-expect-error: track_opens is a boolean
  await client.emails.send({ to: "a@example.com", content: "x", tracking: { track_opens: "yes" } });
  // @ts-expect-error: the answer has no such field
  void campaign.open_rate;
}
