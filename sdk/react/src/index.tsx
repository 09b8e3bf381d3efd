/**
 * @penguinmails/sdk-react: a PenguinMails client for a React tree.
 *
 *   <PenguinMailsProvider apiKey="pk_live_..." baseUrl="https://mail.example.com">
 *     <CampaignCreator />
 *   </PenguinMailsProvider>
 *
 *   const { campaigns, loading, error, createCampaign, refresh } = usePenguinMails();
 *
 * Meant for publishable keys (pk_) in the browser: they read campaigns and analytics, and a
 * write (createCampaign) fails with a PermissionError that `error` also shows. A secret key
 * belongs on a server, never in a page.
 */
import {
  type Campaign,
  type CampaignCreate,
  type Input,
  PenguinMails,
  PenguinMailsError,
  type PenguinMailsOptions,
} from "@penguinmails/sdk";
import {
  createContext,
  type ReactNode,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useState,
} from "react";

export interface PenguinMailsProviderProps extends Partial<PenguinMailsOptions> {
  /** A client of your own instead of one made from apiKey/baseUrl. */
  client?: PenguinMails;
  /** Load the first page of campaigns when mounted; default true. */
  loadCampaigns?: boolean;
  children?: ReactNode;
}

export interface PenguinMailsState {
  client: PenguinMails;
  /** The first page of campaigns, newest first, plus those created here since. */
  campaigns: Campaign[];
  loading: boolean;
  /** The last failure of a load or a createCampaign, or null. */
  error: PenguinMailsError | null;
  /** Reload the campaigns. */
  refresh: () => Promise<void>;
  /** Create a campaign (rejects with the SDK's error, also kept in `error`). */
  createCampaign: (campaign: Input<CampaignCreate>) => Promise<Campaign>;
}

const Context = createContext<PenguinMailsState | null>(null);

function asError(caught: unknown): PenguinMailsError {
  if (caught instanceof PenguinMailsError) return caught;
  return new PenguinMailsError(String(caught), { code: "CLIENT_ERROR", status: 0, cause: caught });
}

export function PenguinMailsProvider({
  client: given,
  loadCampaigns = true,
  children,
  ...options
}: PenguinMailsProviderProps) {
  const { apiKey, baseUrl, maxRetries, retryDelay, maxRetryDelay, timeout, fetch } = options;
  const { dangerouslyAllowBrowser } = options;
  const client = useMemo(
    () =>
      given ??
      new PenguinMails({
        apiKey: apiKey ?? "",
        baseUrl,
        maxRetries,
        retryDelay,
        maxRetryDelay,
        timeout,
        fetch,
        dangerouslyAllowBrowser,
      }),
    [
      given,
      apiKey,
      baseUrl,
      maxRetries,
      retryDelay,
      maxRetryDelay,
      timeout,
      fetch,
      dangerouslyAllowBrowser,
    ],
  );
  const [campaigns, setCampaigns] = useState<Campaign[]>([]);
  const [loading, setLoading] = useState<boolean>(loadCampaigns);
  const [error, setError] = useState<PenguinMailsError | null>(null);

  const refresh = useCallback(async () => {
    setLoading(true);
    try {
      const page = await client.campaigns.list();
      setCampaigns(page.items);
      setError(null);
    } catch (caught) {
      setError(asError(caught));
    } finally {
      setLoading(false);
    }
  }, [client]);

  useEffect(() => {
    if (loadCampaigns) void refresh();
  }, [loadCampaigns, refresh]);

  const createCampaign = useCallback(
    async (campaign: Input<CampaignCreate>) => {
      try {
        const created = await client.campaigns.create(campaign);
        setCampaigns((current) => [created, ...current.filter((c) => c.id !== created.id)]);
        setError(null);
        return created;
      } catch (caught) {
        const failure = asError(caught);
        setError(failure);
        throw failure;
      }
    },
    [client],
  );

  const value = useMemo(
    () => ({ client, campaigns, loading, error, refresh, createCampaign }),
    [client, campaigns, loading, error, refresh, createCampaign],
  );
  return <Context.Provider value={value}>{children}</Context.Provider>;
}

/** The nearest PenguinMailsProvider's client and state. */
export function usePenguinMails(): PenguinMailsState {
  const state = useContext(Context);
  if (state === null) {
    throw new Error("usePenguinMails() must be used inside a <PenguinMailsProvider>");
  }
  return state;
}
