-- name: ensure_tenant
-- Tenants are created on first use by the CLI, each with its test-mode twin (keys, users and
-- data of test mode live under the twin). The no-op update makes RETURNING see the existing
-- live row too, in one statement and race-free.
WITH live AS (
    INSERT INTO tenants (name, tier) VALUES ($1, coalesce($2, 'free'))
    ON CONFLICT (name, mode) DO UPDATE SET name = EXCLUDED.name
    RETURNING id, tier
), twin AS (
    INSERT INTO tenants (name, tier, mode, live_tenant_id)
    SELECT $1, tier, 'test', id FROM live
    ON CONFLICT DO NOTHING
)
SELECT id FROM live;

-- name: find_tenant
-- An account by name (its live row), for commands that must not create one by a typo.
SELECT id FROM tenants WHERE name = $1 AND mode = 'live';

-- name: mode_tenant
-- The tenant row of an account ($1, the live row) for a mode: itself, or its test twin.
SELECT id FROM tenants
WHERE ($2 = 'live' AND id = $1) OR ($2 = 'test' AND live_tenant_id = $1);

-- name: enqueue_messages
-- Bulk insert through unnest: one statement (and one NOTIFY) for any number of recipients,
-- with each message's `email.sent` event ("accepted and queued for delivery") in the same
-- statement, so a message is never queued without its event nor recorded without its row.
-- A recipient already suppressed gets no `email.sent`: the MTA's claim records it
-- `email.suppressed` instead. Ordered by id, which follows the recipients' order (identity
-- values are drawn row by row), so callers can pair ids with recipients; each says whether
-- its recipient is suppressed, so a send can report it instead of dropping it silently.
-- Every row of one send shares the visible To/Cc lists ($16, $17), Reply-To, tags, metadata
-- and its priority class ($21: 0 transactional, 1 bulk).
WITH queued AS (
    INSERT INTO messages (tenant_id, campaign_id, message_id, from_email, from_name, recipient,
                          recipient_domain, subject, text_body, html_body, headers,
                          personalization, settings, next_attempt_at, sandbox,
                          to_header, cc_header, reply_to, tags, metadata, priority)
    SELECT $1, $2, m.message_id, $3, $4, m.recipient, m.domain, $5, $6, $7, $8,
           m.personalization, $9, coalesce($10, now()), $15,
           $16::jsonb, $17::jsonb, $18::jsonb, $19::text[], $20::jsonb, $21
    FROM unnest($11::text[], $12::text[], $13::text[], $14::jsonb[])
         AS m(message_id, recipient, domain, personalization)
    RETURNING id, public_id, tenant_id, campaign_id, recipient, next_attempt_at,
              EXISTS (SELECT 1 FROM suppressions s
                      WHERE s.tenant_id = messages.tenant_id
                        AND s.email = lower(messages.recipient)) AS suppressed
), sent AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
    SELECT q.tenant_id, q.id, q.campaign_id, 'email.sent',
           CASE WHEN $10::timestamptz IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('send_at', q.next_attempt_at) END
    FROM queued q
    WHERE NOT q.suppressed
    ORDER BY q.id
)
SELECT id, public_id, recipient, suppressed FROM queued ORDER BY id;

-- name: queue_depth
-- For `penguinmails status`: how much is where, per destination domain.
SELECT status, recipient_domain, count(*) AS messages, min(next_attempt_at) AS oldest_due
FROM messages
WHERE status IN ('queued', 'deferred', 'sending')
GROUP BY status, recipient_domain
ORDER BY count(*) DESC
LIMIT $1;

-- name: status_totals
SELECT status, count(*) AS messages FROM messages GROUP BY status ORDER BY status;

-- name: depth_by_site
-- For `penguinmails status`, the dashboard's system page and the MTA's /metrics: queued, deferred and sending messages by site and provider
-- (domains not yet resolved are their own line), with the suspension that holds each.
SELECT coalesce(d.site, 'domain:' || m.recipient_domain) AS site, d.provider,
       count(*) FILTER (WHERE m.status = 'queued') AS queued,
       count(*) FILTER (WHERE m.status = 'deferred') AS deferred,
       count(*) FILTER (WHERE m.status = 'sending') AS sending
FROM messages m
LEFT JOIN domain_sites d ON d.domain = m.recipient_domain
WHERE m.status IN ('queued', 'deferred', 'sending')
GROUP BY 1, 2
ORDER BY count(*) DESC
LIMIT $1;

-- name: held_seconds
-- For /metrics, `penguinmails status` and the system page: what shaping rules hold now, and for how long yet.
SELECT key, action, rule, until, reply, extract(epoch FROM until - now())::float8 AS seconds
FROM shaping_suspensions
WHERE until > now()
ORDER BY until DESC;

-- name: mta_presence
-- MTA worker processes by their presence heartbeat (migration 0011; a worker beats every 2
-- seconds): those seen within $1 seconds, and when any was last seen. A table of a row per
-- process.
SELECT count(*) FILTER (WHERE seen_at > now() - make_interval(secs => $1::float8)) AS live,
       max(seen_at) AS last_seen
FROM mta_processes;

-- name: oldest_deferred
-- The message that has waited longest for a retry: the first thing an operator asks.
SELECT id, recipient_domain, attempts, created_at, next_attempt_at, last_reply
FROM messages WHERE status = 'deferred'
ORDER BY created_at LIMIT 1;

-- name: deferral_reasons
-- What receivers are saying: deferred messages grouped by reply code and the start of the
-- reply text (the rest is usually a per-message id that would defeat the grouping).
SELECT coalesce(last_reply_code::text, 'local') AS code,
       left(coalesce(last_reply, ''), 80) AS reason, count(*) AS messages
FROM messages WHERE status = 'deferred'
GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT $1;

-- name: webhook_backlog_summary
-- Deliveries waiting for their endpoint, and the oldest of them.
SELECT count(*) AS pending, min(created_at) AS oldest
FROM webhook_deliveries WHERE status IN ('pending', 'delivering');

-- name: queue_select
-- The messages a `queue retry|purge` would touch: every filter is optional (NULL matches all),
-- and only unfinished messages qualify, so a purge can never rewrite history.
SELECT count(*) FROM messages
WHERE status = ANY($1::text[])
  AND ($2::text IS NULL OR recipient_domain = lower($2))
  AND ($3::text IS NULL
       OR campaign_id IN (SELECT id FROM campaigns WHERE public_id = $3));

-- name: queue_retry
-- Make matching queued/deferred messages due now, for example after a receiver's outage.
UPDATE messages SET next_attempt_at = now(), updated_at = now()
WHERE status = ANY($1::text[])
  AND ($2::text IS NULL OR recipient_domain = lower($2))
  AND ($3::text IS NULL
       OR campaign_id IN (SELECT id FROM campaigns WHERE public_id = $3));

-- name: queue_purge
-- Cancel matching unfinished messages, each with its event, in one statement; a message
-- leased right now ('sending') is left to its worker.
WITH cancelled AS (
    UPDATE messages SET status = 'cancelled', updated_at = now()
    WHERE status = ANY($1::text[])
      AND ($2::text IS NULL OR recipient_domain = lower($2))
      AND ($3::text IS NULL
           OR campaign_id IN (SELECT id FROM campaigns WHERE public_id = $3))
    RETURNING id, tenant_id, campaign_id, recipient
)
INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
SELECT tenant_id, id, campaign_id, 'email.cancelled',
       jsonb_build_object('recipient', recipient, 'reason', 'purged by operator')
FROM cancelled;

-- name: allows_executable_attachments
-- The account's choice (held on its live row) for both of its modes: test mode sends what
-- live mode would.
SELECT l.allow_executable_attachments
FROM tenants t JOIN tenants l ON l.id = coalesce(t.live_tenant_id, t.id)
WHERE t.id = $1;

-- name: store_attachments
-- Bytes already stored for this tenant are not written again: DO NOTHING keeps the row (an
-- upsert would rewrite megabytes to return its id), and the second SELECT finds its id in the
-- statement's snapshot. Bytes another transaction commits meanwhile are in neither; the
-- caller asks again for those.
WITH given AS (
    SELECT * FROM unnest($2::bytea[], $3::int[], $4::bytea[]) AS g(sha256, size, content)
), inserted AS (
    INSERT INTO attachments (tenant_id, sha256, size, content)
    SELECT $1, sha256, size, content FROM given
    ON CONFLICT (tenant_id, sha256) DO NOTHING
    RETURNING id, sha256
)
SELECT id, sha256 FROM inserted
UNION ALL
SELECT a.id, a.sha256 FROM attachments a JOIN given g ON g.sha256 = a.sha256
WHERE a.tenant_id = $1;

-- name: link_attachments
-- Done after enqueue_messages, in its transaction, so that query stays as it is: the rows
-- are not visible to the MTA before the commit, when they already carry their attachments.
UPDATE messages SET attachments = $2 WHERE id = ANY($1::bigint[]);

-- name: paused_sending
-- For `penguinmails status`: what is paused now, by hand or by the circuit breaker (a
-- campaign, a sending identity, a tenant's sending domain, a whole tenant), with the reason,
-- since when, and how many of its messages wait; newest first.
SELECT * FROM (
    SELECT 'campaign' AS scope, t.name AS tenant, t.mode, c.public_id AS name,
           coalesce(c.paused_reason, 'paused by hand') AS reason, c.paused_at AS since,
           (SELECT count(*) FROM messages m
            WHERE m.campaign_id = c.id AND m.status = 'paused') AS waiting
    FROM campaigns c JOIN tenants t ON t.id = c.tenant_id
    WHERE c.status = 'paused'
    UNION ALL
    SELECT 'identity', t.name, t.mode, i.email, coalesce(i.paused_reason, 'paused'),
           i.paused_at,
           (SELECT count(*) FROM messages m
            WHERE m.identity_id = i.id AND m.status IN ('queued', 'deferred'))
    FROM identities i JOIN tenants t ON t.id = i.tenant_id
    WHERE i.status = 'paused'
    UNION ALL
    SELECT h.scope, t.name, t.mode, coalesce(nullif(h.key, ''), t.name), h.reason,
           h.created_at,
           (SELECT count(*) FROM messages m
            WHERE m.tenant_id = h.tenant_id AND m.status = 'paused'
              AND m.held_reason = 'sending paused'
              AND (h.scope = 'tenant' OR lower(split_part(m.from_email, '@', 2)) = h.key))
    FROM sending_holds h JOIN tenants t ON t.id = h.tenant_id
) paused
ORDER BY since DESC NULLS LAST
LIMIT $1;

-- name: set_operator
-- `penguinmails operators grant|revoke`: one user of one tenant's mode; the user's id, or
-- nothing when there is no such user.
UPDATE users u SET operator = $4
FROM tenants t
WHERE t.id = u.tenant_id AND t.name = $1 AND t.mode = $2 AND u.email = lower($3)
RETURNING u.id;
