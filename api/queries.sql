-- name: find_api_key
-- Every authenticated request: one probe of the unique prefix index. Revoked keys are
-- returned too, so the caller can say "revoked" rather than "invalid".
-- The key's tenant row gives its mode; the account's live row, the tier.
SELECT k.id, k.tenant_id, k.kind, k.secret_hash, k.revoked_at, k.last_used_at, t.mode,
       a.id AS account_id, a.tier
FROM api_keys k
JOIN tenants t ON t.id = k.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE k.prefix = $1;

-- name: touch_api_key
-- A verified key's last use, to the minute (migration 0041): the caller asks only when the
-- stored time is a minute old, and the WHERE keeps concurrent requests to one write.
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: find_user
-- A login token's subject, checked on every request so a deleted user's tokens, and tokens
-- older than the user's token version, stop at once.
SELECT u.tenant_id, u.token_version, t.mode, a.id AS account_id, a.tier
FROM users u
JOIN tenants t ON t.id = u.tenant_id
JOIN tenants a ON a.id = coalesce(t.live_tenant_id, t.id)
WHERE u.id = $1;

-- name: insert_api_key
-- The key itself is never stored: its prefix for lookup, its hash for the compare.
INSERT INTO api_keys (tenant_id, prefix, secret_hash, kind, mode, name)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING public_id AS id, prefix, kind, mode, name, created_at, revoked_at,
          NULL::text AS client, NULL::text AS scope, last_used_at;

-- name: set_tier
-- An account's tier, on its live row and its test twin alike (test mode's budget follows it).
UPDATE tenants SET tier = $2 WHERE id = $1 OR live_tenant_id = $1;

-- name: list_api_keys
-- Prefixes only: nothing here can be used to authenticate. Newest first, keyset-paginated on
-- the public id through the (tenant_id, public_id) index; $2 is the last id of the page
-- before, $3 the page size.
-- OAuth grants (api.oauth) are listed with their client's id and their scope.
SELECT k.public_id AS id, k.prefix, k.kind, k.mode, k.name, k.created_at, k.revoked_at,
       c.public_id AS client, k.scope, k.last_used_at
FROM api_keys k LEFT JOIN oauth_clients c ON c.id = k.oauth_client_id
WHERE k.tenant_id = $1 AND ($2::text IS NULL OR k.public_id < $2)
ORDER BY k.public_id DESC
LIMIT $3;

-- name: revoke_api_key
-- Takes effect at the next request: keys are looked up every time, never cached.
-- Revoking an OAuth grant ends its tokens the same way (find_access_token checks it).
UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
WHERE k.tenant_id = $1 AND k.public_id = $2
RETURNING k.public_id AS id, k.prefix, k.kind, k.mode, k.name, k.created_at, k.revoked_at,
          (SELECT c.public_id FROM oauth_clients c WHERE c.id = k.oauth_client_id) AS client,
          k.scope, k.last_used_at;

-- name: insert_user
-- Emails are unique within a tenant's mode only: another tenant's users are invisible here.
INSERT INTO users (tenant_id, email, password_hash) VALUES ($1, lower($2), $3)
ON CONFLICT (tenant_id, email) DO NOTHING
RETURNING public_id AS id, email, created_at;

-- name: login_candidates
-- The accounts an address has (a person may be a user of several tenants, or of both modes
-- of one), narrowed by the tenant name and mode when the login names them. Capped: login
-- verifies each candidate's password, and that work must stay bounded.
SELECT u.id, u.tenant_id, u.password_hash, u.token_version, t.mode
FROM users u JOIN tenants t ON t.id = u.tenant_id
WHERE u.email = lower($1)
  AND ($2::text IS NULL OR t.name = $2)
  AND ($3::text IS NULL OR t.mode = $3)
ORDER BY u.id
LIMIT 5;

-- name: list_users
-- Newest first, keyset-paginated on the public id as list_api_keys is.
SELECT public_id AS id, email, created_at
FROM users
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: delete_user
-- Deleting the row ends its tokens too: find_user no longer finds their subject.
DELETE FROM users WHERE tenant_id = $1 AND public_id = $2
RETURNING public_id AS id, email, created_at;

-- name: bump_token_version
-- Logout everywhere: every token carries the version it was issued under.
UPDATE users SET token_version = token_version + 1 WHERE id = $1
RETURNING token_version;

-- name: user_password
SELECT id, tenant_id, password_hash, token_version FROM users WHERE id = $1;

-- name: set_password
-- A new password ends every session that the old one opened.
UPDATE users SET password_hash = $2, token_version = token_version + 1 WHERE id = $1
RETURNING token_version;

-- name: login_failures
-- Failed logins in the current window for the account address and the source network.
SELECT scope, failures FROM login_failures WHERE scope = ANY($1::text[]) AND window_start = $2;

-- name: count_login_failure
INSERT INTO login_failures AS f (scope, window_start, failures)
SELECT scope, $2, 1 FROM unnest($1::text[]) AS s(scope)
ON CONFLICT (scope, window_start) DO UPDATE SET failures = f.failures + 1;

-- name: clear_login_failures
-- A successful login forgives the account's failures (not the network's).
DELETE FROM login_failures WHERE scope = $1;

-- name: prune_login_failures
DELETE FROM login_failures WHERE window_start < $1;

-- name: count_request
-- Rate limiting shared by every API process: the row of the tenant's mode and bucket for the
-- current window is created or incremented in one statement, and the count after this
-- request is returned.
INSERT INTO rate_limit_windows AS w (tenant_id, bucket, window_start, requests)
VALUES ($1, $3, $2, 1)
ON CONFLICT (tenant_id, bucket, window_start) DO UPDATE SET requests = w.requests + 1
RETURNING requests;

-- name: prune_rate_limits
-- Windows that ended are no longer read.
DELETE FROM rate_limit_windows WHERE window_start < $1;

-- name: sender_domains
-- The tenant's sending domains (oldest first: the first is the default sender's) and, if
-- another tenant owns the requested domain, that row too, so one query answers both
-- "is it ours?" and "is it someone else's?".
SELECT domain, tenant_id = $1 AS own, min(created_at) AS first_added
FROM sending_domains
WHERE tenant_id = $1 OR domain = $2
GROUP BY domain, tenant_id
ORDER BY first_added, domain;

-- name: default_sender
-- The sender set for this tenant row (this mode), if any.
SELECT default_from_email, default_from_name FROM tenants WHERE id = $1;

-- name: set_default_sender
-- NULL clears it (back to the noreply@ fallback).
UPDATE tenants SET default_from_email = $2, default_from_name = $3 WHERE id = $1;

-- name: claim_idempotency_key
-- The first request with a key inserts the row and goes on; a concurrent one with the same
-- key waits here for the first to commit, then finds the stored response.
INSERT INTO idempotency_keys (tenant_id, key, request_hash) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING key;

-- name: get_idempotency_key
SELECT request_hash, status_code, response FROM idempotency_keys
WHERE tenant_id = $1 AND key = $2;

-- name: store_idempotency_response
UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE tenant_id = $1 AND key = $2;

-- name: prune_idempotency_keys
-- Keys are honoured for a day, as the big payment APIs do.
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours';

-- name: insert_campaign
INSERT INTO campaigns (tenant_id, name, subject, from_email, from_name, html_body, text_body,
                       headers, settings, recipients, recipient_count, sandbox, send_at,
                       template_id, template_version, tags, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
RETURNING id, public_id;

-- name: insert_campaign_event
-- campaign.created / campaign.sent: written in the transaction that made the change, so a
-- webhook never announces what was rolled back, and nothing done goes unannounced.
INSERT INTO events (tenant_id, campaign_id, type, data) VALUES ($1, $2, $3, $4);

-- name: get_campaign
-- `sending` with a send_at still ahead is shown as `scheduled`: the messages are queued
-- already, due at send_at, so there is no state change to record when that moment comes.
SELECT public_id, name, subject, from_email, from_name, html_body, text_body, headers,
       settings, recipient_count, sandbox, send_at, started_at, paused_at, completed_at,
       cancelled_at, created_at, updated_at, template_id, template_version, tags, metadata,
       paused_reason, variants, ab_test, ab_winner, window_days, window_start, window_end,
       window_zone, window_skip, window_holidays, window_holiday_dates, window_holidays_until,
       CASE WHEN status = 'sending' AND send_at > now() THEN 'scheduled' ELSE status END
           AS status
FROM campaigns WHERE tenant_id = $1 AND public_id = $2;

-- name: list_campaigns
-- Newest first, keyset-paginated on the public id (which sorts by creation) through the
-- (tenant_id, public_id) index, so page 1,000 costs what page 1 does. One extra row is
-- fetched to know whether there is a next page.
SELECT public_id, name, subject, from_email, from_name, html_body, text_body, headers,
       settings, recipient_count, sandbox, send_at, started_at, paused_at, completed_at,
       cancelled_at, created_at, updated_at, template_id, template_version, tags, metadata,
       paused_reason, variants, ab_test, ab_winner, window_days, window_start, window_end,
       window_zone, window_skip, window_holidays, window_holiday_dates, window_holidays_until,
       CASE WHEN status = 'sending' AND send_at > now() THEN 'scheduled' ELSE status END
           AS status
FROM campaigns
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: lock_campaign
-- State changes lock the campaign row first (then its messages), the same order the
-- completion trigger's callers end up in, so the two serialise rather than race.
SELECT id, public_id, tenant_id, name, subject, from_email, from_name, html_body, text_body,
       headers, settings, recipients, status, sandbox, send_at, paused_at, template_id,
       template_version, tags, metadata, variants, ab_test, ab_winner, window_days,
       window_start, window_end, window_zone, window_skip, window_holidays,
       window_holiday_dates, window_holidays_until
FROM campaigns WHERE tenant_id = $1 AND public_id = $2
FOR UPDATE;

-- name: update_draft
-- The whole editable content is written back (the API merged the patch in Python).
UPDATE campaigns
SET name = $3, subject = $4, from_email = $5, from_name = $6, html_body = $7, text_body = $8,
    headers = $9, settings = $10, recipients = $11, recipient_count = $12, send_at = $13,
    template_id = $14, template_version = $15, tags = $16, metadata = $17, updated_at = now()
WHERE tenant_id = $1 AND id = $2 AND status = 'draft';

-- name: start_campaign
-- Messages are queued in the same transaction; recipients are dropped from the row, as the
-- queue now holds them.
UPDATE campaigns
SET status = 'sending', send_at = coalesce($3, now()), started_at = coalesce(started_at, now()),
    completed_at = NULL, recipients = '[]', recipient_count = $4,
    updated_at = now()
WHERE id = $1 AND tenant_id = $2;

-- name: add_to_campaign
-- send-bulk: more recipients for a campaign that may be sending or even completed.
UPDATE campaigns
SET status = 'sending', started_at = coalesce(started_at, now()), completed_at = NULL,
    recipient_count = recipient_count + $3, updated_at = now()
WHERE id = $1 AND tenant_id = $2;

-- name: pause_campaign_messages
-- Waiting messages leave the MTA's reach ('paused' is not claimed); messages in an SMTP
-- conversation right now finish it.
UPDATE messages SET status = 'paused', updated_at = now()
WHERE campaign_id = $1 AND tenant_id = $2 AND status IN ('queued', 'deferred');

-- name: set_campaign_paused
UPDATE campaigns SET status = 'paused', paused_at = now(), paused_reason = NULL,
                     updated_at = now()
WHERE id = $1;

-- name: resume_campaign_messages
-- Back in reach, each due time moved by the length of the pause, so batches keep their spacing
-- and a retry keeps its back-off; and, for a campaign with a sending window, moved into it
-- again where the shift took it out (as api/windows.sql campaign_into_window does).
UPDATE messages m
SET status = CASE WHEN m.attempts > 0 THEN 'deferred' ELSE 'queued' END,
    next_attempt_at = next_in_window(
        m.next_attempt_at + (now() - $3::timestamptz),
        coalesce((SELECT ct.custom_fields ->> 'timezone' FROM contacts ct
                  WHERE ct.tenant_id = m.tenant_id AND ct.email = lower(m.recipient)),
                 m.personalization ->> 'timezone'),
        c.window_zone, c.window_days, c.window_start, c.window_end,
        c.window_skip || c.window_holiday_dates, random()),
    updated_at = now()
FROM campaigns c
WHERE c.id = $1 AND m.campaign_id = $1 AND m.tenant_id = $2 AND m.status = 'paused';

-- name: set_campaign_resumed
-- The send_at moves with the messages; the completion check covers a campaign whose last
-- messages finished during the pause.
WITH resumed AS (
    UPDATE campaigns
    SET status = 'sending', paused_at = NULL, paused_reason = NULL, updated_at = now(),
        send_at = send_at + (now() - $2::timestamptz)
    WHERE id = $1
    RETURNING id
)
SELECT campaign_try_complete(id), pg_notify('penguinmails_queue', '') FROM resumed;

-- name: cancel_campaign_messages
-- Waiting messages are cancelled (those held for an A/B test's winner too); a message
-- mid-conversation finishes (it may be delivered).
UPDATE messages SET status = 'cancelled', updated_at = now()
WHERE campaign_id = $1 AND tenant_id = $2
  AND status IN ('queued', 'deferred', 'paused', 'held');

-- name: set_campaign_cancelled
-- Set before the messages are cancelled, so the completion trigger (which only completes
-- 'sending' campaigns) does not call a cancelled campaign completed.
UPDATE campaigns SET status = 'cancelled', cancelled_at = now(), updated_at = now()
WHERE id = $1;

-- name: now
-- The transaction's time, which is what the queue's now() defaults use: batch times computed
-- from it line up with rows inserted with next_attempt_at = now().
SELECT now();

-- name: get_message
-- By the public id through (tenant_id, public_id); the campaign is shown by its public id.
-- A row without a To list (a campaign's) shows To: its recipient, as its message does.
SELECT m.id AS pk, m.public_id AS id, m.message_id, c.public_id AS campaign_id, m.from_email,
       m.recipient, m.subject, m.status, m.attempts, m.next_attempt_at, m.last_reply_code,
       m.last_reply, m.enhanced_status, m.sandbox, m.created_at, m.sent_at,
       coalesce(m.to_header, jsonb_build_array(jsonb_build_object('email', m.recipient))) AS "to",
       coalesce(m.cc_header, '[]') AS cc, coalesce(m.reply_to, '[]') AS reply_to,
       m.tags, m.metadata, m.held_reason, i.public_id AS identity_id, m.settings,
       m.html_body IS NOT NULL AS has_html
FROM messages m
LEFT JOIN campaigns c ON c.id = m.campaign_id
LEFT JOIN identities i ON i.id = m.identity_id
WHERE m.tenant_id = $1 AND m.public_id = $2;

-- name: message_events
-- The message's history, oldest first (events_message_idx); capped for pathological cases
-- such as a pixel fetched by a crawler thousands of times.
SELECT public_id AS id, type, data, created_at FROM events WHERE message_id = $1
ORDER BY events.id LIMIT 500;

-- name: insert_contact
INSERT INTO contacts (tenant_id, email, first_name, last_name, company, custom_fields, tags)
VALUES ($1, lower($2), $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, email) DO NOTHING
RETURNING public_id AS id, email, first_name, last_name, company, custom_fields, tags,
          created_at, updated_at;

-- name: get_contact
SELECT public_id AS id, email, first_name, last_name, company, custom_fields, tags,
       created_at, updated_at
FROM contacts WHERE tenant_id = $1 AND public_id = $2;

-- name: list_contacts
-- Keyset pagination on the public id (creation order); the tag filter uses the GIN index
-- when it is selective and the (tenant_id, public_id) index otherwise, the planner's choice.
SELECT public_id AS id, email, first_name, last_name, company, custom_fields, tags,
       created_at, updated_at
FROM contacts
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
  AND ($4::text IS NULL OR tags @> ARRAY[$4::text])
ORDER BY public_id DESC
LIMIT $3;

-- name: update_contact
-- The API merges the patch; the unique (tenant, email) index answers a clash on a new email.
UPDATE contacts
SET email = lower($3), first_name = $4, last_name = $5, company = $6, custom_fields = $7,
    tags = $8, updated_at = now()
WHERE tenant_id = $1 AND public_id = $2
RETURNING public_id AS id, email, first_name, last_name, company, custom_fields, tags,
          created_at, updated_at;

-- name: delete_contact
DELETE FROM contacts WHERE tenant_id = $1 AND public_id = $2 RETURNING public_id AS id;

-- name: list_suppressions
-- Keyset pagination on the primary key (tenant_id, email).
SELECT email, reason, detail, created_at FROM suppressions
WHERE tenant_id = $1 AND ($2::text IS NULL OR email > $2)
ORDER BY email
LIMIT $3;

-- name: add_suppression
-- Adding an address twice keeps the first reason (it is usually the more telling one: a
-- bounce or an unsubscribe) and answers with the stored row.
WITH added AS (
    INSERT INTO suppressions (tenant_id, email, reason, detail)
    VALUES ($1, lower($2), $3, $4)
    ON CONFLICT DO NOTHING
    RETURNING email, reason, detail, created_at
)
SELECT email, reason, detail, created_at, true AS created FROM added
UNION ALL
SELECT email, reason, detail, created_at, false FROM suppressions
WHERE tenant_id = $1 AND email = lower($2) AND NOT EXISTS (SELECT 1 FROM added);

-- name: delete_suppression
DELETE FROM suppressions WHERE tenant_id = $1 AND email = lower($2) RETURNING email;

-- name: webhook_secrets
-- For the test ping only: the sealed secrets of one endpoint of the tenant.
SELECT secret_sealed, previous_secret_sealed,
       previous_secret_expires_at IS NOT NULL AND previous_secret_expires_at > now()
           AS previous_valid
FROM webhooks WHERE tenant_id = $1 AND public_id = $2;

