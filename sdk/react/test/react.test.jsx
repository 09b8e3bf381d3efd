// The documentation's React integration, rendered in a DOM against the real server.
import { afterEach, describe, expect, test } from "vitest";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { PenguinMails, PermissionError } from "@penguinmails/sdk";
import { PenguinMailsProvider, usePenguinMails } from "@penguinmails/sdk-react";

const BASE_URL = process.env.PENGUINMAILS_BASE_URL;
const API_KEY = process.env.PENGUINMAILS_API_KEY;
if (!BASE_URL || !API_KEY) throw new Error("run these tests through pytest tests/sdk");

afterEach(cleanup);

function CampaignCreator() {
  const { campaigns, loading, error, createCampaign } = usePenguinMails();

  const handleCreateCampaign = async (event) => {
    event.preventDefault();
    const campaignData = {
      name: new FormData(event.target).get("name"),
      subject: "Welcome to PenguinMails!",
      content: { html: "<h1>Welcome!</h1>" },
    };
    try {
      const campaign = await createCampaign(campaignData);
      console.log("Campaign created:", campaign.id);
    } catch (error) {
      console.error("Failed to create campaign:", error.message);
    }
  };

  return (
    <form onSubmit={handleCreateCampaign}>
      <input name="name" aria-label="name" defaultValue="From React" />
      <button type="submit">Create</button>
      <p data-testid="state">{loading ? "loading" : `${campaigns.length} campaigns`}</p>
      <ul>
        {campaigns.map((c) => (
          <li key={c.id}>
            {c.name} ({c.status})
          </li>
        ))}
      </ul>
      {error && <p role="alert">{`${error.name} ${error.status} ${error.code}`}</p>}
    </form>
  );
}

function App({ apiKey, secret = false }) {
  return (
    <PenguinMailsProvider apiKey={apiKey} baseUrl={BASE_URL} dangerouslyAllowBrowser={secret}>
      <CampaignCreator />
    </PenguinMailsProvider>
  );
}

describe("PenguinMailsProvider and usePenguinMails", () => {
  test("loads the campaigns, then creates one that joins the list", async () => {
    const server = new PenguinMails({
      apiKey: API_KEY,
      baseUrl: BASE_URL,
      dangerouslyAllowBrowser: true, // this test's "server" side runs in the same jsdom
    });
    await server.campaigns.create({ name: "Existing", subject: "Hi", content: "<p>Hi</p>" });

    // Creating needs a secret key; in a page it must be asked for by name.
    render(<App apiKey={API_KEY} secret />);
    expect(screen.getByTestId("state").textContent).toBe("loading");
    await waitFor(() => expect(screen.getByText("Existing (draft)")).toBeTruthy());
    const before = Number(screen.getByTestId("state").textContent.split(" ")[0]);

    fireEvent.submit(screen.getByRole("button", { name: "Create" }).closest("form"));
    await waitFor(() => expect(screen.getByText("From React (draft)")).toBeTruthy());
    expect(screen.getByTestId("state").textContent).toBe(`${before + 1} campaigns`);
    expect(screen.queryByRole("alert")).toBeNull();
    const stored = await server.campaigns.list().all();
    expect(stored.map((c) => c.name)).toContain("From React");
  });

  test("a publishable key reads, and its create shows a PermissionError", async () => {
    const server = new PenguinMails({
      apiKey: API_KEY,
      baseUrl: BASE_URL,
      dangerouslyAllowBrowser: true,
    });
    const { key } = await server.http.request("POST", "/api-keys", {
      body: { type: "publishable" },
    });
    render(<App apiKey={key} />);
    await waitFor(() => expect(screen.getByText("Existing (draft)")).toBeTruthy());
    const before = screen.getByTestId("state").textContent;
    fireEvent.submit(screen.getByRole("button", { name: "Create" }).closest("form"));
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toBe("PermissionError 403 FORBIDDEN");
    expect(screen.getByTestId("state").textContent).toBe(before);
  });

  test("a wrong key shows an AuthenticationError from the load", async () => {
    render(<App apiKey="pk_test_wrong" />);
    const alert = await screen.findByRole("alert");
    expect(alert.textContent).toMatch(/^AuthenticationError 401 /);
  });

  test("usePenguinMails outside a provider says so", () => {
    function Lonely() {
      usePenguinMails();
      return null;
    }
    expect(() => render(<Lonely />)).toThrow(/inside a <PenguinMailsProvider>/);
  });
});

test("a secret key in a page is refused unless asked for by name", () => {
  expect(() => new PenguinMails({ apiKey: API_KEY, baseUrl: BASE_URL })).toThrow(
    /secret key \(sk_\) in a browser/,
  );
  expect(() => new PenguinMails({ apiKey: "pk_test_x", baseUrl: BASE_URL })).not.toThrow();
  expect(new PermissionError("m", { code: "FORBIDDEN", status: 403 }).status).toBe(403);
});
