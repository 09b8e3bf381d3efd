-- name: claim_batch
-- Take up to $1 due messages, plus messages whose lease expired (their worker died), and
-- lease them to worker $2 for $3 seconds. SKIP LOCKED lets many workers claim at once
-- without waiting on each other; the short transaction is the whole claim, so no lock is
-- held across an SMTP conversation. A re-taken lease marks the message possible_duplicate:
-- the dead worker may have had its 250 before it could commit. The suppression check rides
-- along so a suppressed address costs no extra round trip.
-- Fairness: the batch is shared between the tenants with queued messages, found by a loose
-- index scan (one probe of messages_fair_due_idx per tenant, however many messages each
-- has); each offers at most twice its even share, its transactional messages (priority 0)
-- first, and the batch takes them round robin, every tenant's transactional turns before
-- anyone's bulk. A tenant with a million queued therefore cannot delay another's fresh
-- message by more than one claim. Offered rows not taken stay locked only until this
-- statement commits.
-- Identities first: messages sent through a sending identity (migration 0030), which the
-- fair part leaves alone. Each identity with due messages is locked (SKIP LOCKED: another
-- MTA process is taking its messages right now; next claim) while its sends of the last day
-- and hour are counted and its allowance taken, so its caps hold across every process. The
-- allowance is the least of what its daily limit (warm-up ramp included) and hourly cap
-- leave, one when it keeps a gap between sends (none before next_send_at), none while it is
-- paused. Each message taken is logged in identity_sends (a re-claim of the same message is
-- not a second send); its next_send_at moves by the gap (min + random). The due messages a
-- cap, gap or pause leaves behind are moved to the moment it lets the next one go
-- ('infinity' while paused: resuming brings them back), with the reason in held_reason, so
-- they are not re-read by every claim until then. The fair part takes what is left of the
-- batch.
-- Every read of messages here names done_on = 'infinity', the live partition (migration
-- 0044), where all unfinished messages are: the plan reads no week of finished ones. The
-- final UPDATE takes the picked ids as an array, so it probes the primary key for each: as a
-- join, the planner (which cannot know the batch is 200 rows) may hash the whole queue.
WITH RECURSIVE queued_identities AS (
    (SELECT identity_id FROM messages
     WHERE done_on = 'infinity' AND status IN ('queued', 'deferred') AND identity_id IS NOT NULL
     ORDER BY identity_id LIMIT 1)
    UNION ALL
    SELECT (SELECT m.identity_id FROM messages m
            WHERE m.done_on = 'infinity' AND m.status IN ('queued', 'deferred')
              AND m.identity_id IS NOT NULL
              AND m.identity_id > q.identity_id
            ORDER BY m.identity_id LIMIT 1)
    FROM queued_identities q
    WHERE q.identity_id IS NOT NULL
), locked AS (
    SELECT i.id, i.status, i.paused_reason, i.hourly_cap, i.next_send_at,
           identity_daily_limit(i) AS daily_limit,
           i.min_gap_seconds + random() * i.random_gap_seconds AS gap
    FROM identities i
    WHERE i.id IN (SELECT identity_id FROM queued_identities)
      AND EXISTS (SELECT 1 FROM messages m
                  WHERE m.done_on = 'infinity' AND m.identity_id = i.id
                    AND m.status IN ('queued', 'deferred')
                    AND m.next_attempt_at <= now())
    ORDER BY i.id
    FOR UPDATE SKIP LOCKED
), counted AS (
    SELECT l.*, w.day_count, w.hour_count, w.day_oldest, w.hour_oldest,
           CASE WHEN l.status <> 'active' OR l.next_send_at > now() THEN 0
                ELSE greatest(0, least(l.daily_limit - w.day_count, l.hourly_cap - w.hour_count,
                                       CASE WHEN l.gap > 0 THEN 1 END, $1))
           END AS allowance
    FROM locked l
    CROSS JOIN LATERAL (
        SELECT count(*)::int AS day_count,
               (count(*) FILTER (WHERE s.sent_at > now() - interval '1 hour'))::int
                   AS hour_count,
               min(s.sent_at) AS day_oldest,
               min(s.sent_at) FILTER (WHERE s.sent_at > now() - interval '1 hour')
                   AS hour_oldest
        FROM identity_sends s
        WHERE s.identity_id = l.id AND s.sent_at > now() - interval '1 day'
    ) w
), identity_offered AS (
    SELECT o.id, c.id AS identity_id,
           row_number() OVER (PARTITION BY c.id ORDER BY o.priority, o.next_attempt_at) AS turn
    FROM counted c
    CROSS JOIN LATERAL (
        SELECT m.id, m.priority, m.next_attempt_at FROM messages m
        WHERE m.done_on = 'infinity' AND m.identity_id = c.id
          AND m.status IN ('queued', 'deferred')
          AND m.next_attempt_at <= now()
        ORDER BY m.priority, m.next_attempt_at
        LIMIT c.allowance
        FOR UPDATE SKIP LOCKED
    ) o
), identity_picked AS (
    SELECT id, identity_id FROM identity_offered ORDER BY turn, identity_id LIMIT $1
), paced AS (
    SELECT c.id, c.status, c.paused_reason, c.hourly_cap, c.next_send_at, c.daily_limit,
           c.gap, c.day_count, c.hour_count, c.day_oldest, c.hour_oldest,
           (SELECT count(*) FROM identity_picked p WHERE p.identity_id = c.id)::int AS taken
    FROM counted c
), holds AS (
    -- Why the rest waits, and until when; NULL until: nothing holds it (the batch was full).
    SELECT p.id,
           CASE WHEN p.status <> 'active' THEN 'infinity'::timestamptz
                ELSE greatest(
                    CASE WHEN p.taken > 0 AND p.gap > 0
                         THEN now() + make_interval(secs => p.gap) END,
                    CASE WHEN p.taken = 0 AND p.next_send_at > now() THEN p.next_send_at END,
                    CASE WHEN p.day_count + p.taken >= p.daily_limit
                         THEN coalesce(p.day_oldest, now()) + interval '1 day' END,
                    CASE WHEN p.hour_count + p.taken >= p.hourly_cap
                         THEN coalesce(p.hour_oldest, now()) + interval '1 hour' END)
           END AS until,
           CASE WHEN p.status <> 'active'
                    THEN 'identity paused' || coalesce(': ' || p.paused_reason, '')
                WHEN p.day_count + p.taken >= p.daily_limit
                    THEN format('identity daily cap (%s a day) reached', p.daily_limit)
                WHEN p.hour_count + p.taken >= p.hourly_cap
                    THEN format('identity hourly cap (%s an hour) reached', p.hourly_cap)
                ELSE 'identity gap between sends' END AS reason
    FROM paced p
), held AS (
    UPDATE messages m
    SET next_attempt_at = CASE
            WHEN h.until = 'infinity' THEN h.until
            -- A sequence step held past its sending window waits for the next window.
            ELSE coalesce((SELECT next_in_window(h.until, c.custom_fields ->> 'timezone',
                                                 q.window_zone, q.window_days, q.window_start,
                                                 q.window_end, q.window_skip, random())
                           FROM sequence_messages sm
                           JOIN sequence_enrollments e ON e.id = sm.enrollment_id
                           JOIN sequences q ON q.id = e.sequence_id
                           JOIN contacts c ON c.id = e.contact_id
                           WHERE sm.message_id = m.id), h.until) END,
        held_reason = h.reason, updated_at = now()
    FROM holds h
    WHERE m.done_on = 'infinity' AND h.until IS NOT NULL AND m.identity_id = h.id
      AND m.status IN ('queued', 'deferred') AND m.next_attempt_at <= now()
      AND m.id NOT IN (SELECT id FROM identity_picked)
    RETURNING m.id
), logged AS (
    INSERT INTO identity_sends (identity_id, message_id)
    SELECT identity_id, id FROM identity_picked
    ON CONFLICT DO NOTHING
), spaced AS (
    UPDATE identities i
    SET next_send_at = now() + make_interval(secs => p.gap)
    FROM paced p
    WHERE i.id = p.id AND p.taken > 0 AND p.gap > 0
), queued_tenants AS (
    (SELECT tenant_id FROM messages
     WHERE done_on = 'infinity' AND status IN ('queued', 'deferred')
     ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT m.tenant_id FROM messages m
            WHERE m.done_on = 'infinity' AND m.status IN ('queued', 'deferred')
              AND m.tenant_id > t.tenant_id
            ORDER BY m.tenant_id LIMIT 1)
    FROM queued_tenants t
    WHERE t.tenant_id IS NOT NULL
), share AS (
    SELECT least($1, ceil(2.0 * $1 / greatest(count(*), 1)))::int AS per_tenant
    FROM queued_tenants WHERE tenant_id IS NOT NULL
), offered AS (
    SELECT o.id, o.priority, o.next_attempt_at,
           row_number() OVER (PARTITION BY t.tenant_id
                              ORDER BY o.priority, o.next_attempt_at) AS turn
    FROM queued_tenants t
    CROSS JOIN share
    CROSS JOIN LATERAL (
        SELECT m.id, m.priority, m.next_attempt_at FROM messages m
        WHERE m.done_on = 'infinity' AND m.tenant_id = t.tenant_id
          AND m.status IN ('queued', 'deferred')
          AND m.next_attempt_at <= now() AND m.identity_id IS NULL
        ORDER BY m.priority, m.next_attempt_at
        LIMIT share.per_tenant
        FOR UPDATE SKIP LOCKED
    ) o
    WHERE t.tenant_id IS NOT NULL
), due AS (
    -- What the identities left of the batch.
    SELECT id FROM offered ORDER BY priority, turn, next_attempt_at
    LIMIT greatest($1 - (SELECT count(*) FROM identity_picked), 0)
), stale AS (
    SELECT id FROM messages
    WHERE done_on = 'infinity' AND status = 'sending' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM identity_picked
    UNION ALL
    (SELECT id FROM due UNION ALL SELECT id FROM stale
     LIMIT greatest($1 - (SELECT count(*) FROM identity_picked), 0))
)
UPDATE messages m
SET status = 'sending',
    lease_owner = $2,
    lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3),
    possible_duplicate = m.possible_duplicate OR m.status = 'sending',
    held_reason = NULL,
    updated_at = now()
WHERE m.done_on = 'infinity' AND m.id = ANY (ARRAY(SELECT id FROM picked))
RETURNING m.id, m.tenant_id, m.campaign_id, m.message_id, m.from_email, m.from_name,
          m.recipient, m.recipient_domain, m.subject, m.text_body, m.html_body, m.headers,
          m.personalization, m.settings, m.attempts, m.created_at, m.lease_token,
          m.possible_duplicate, m.sandbox, m.to_header, m.cc_header, m.reply_to,
          m.attachments, m.identity_id,
          EXISTS (SELECT 1 FROM suppressions s
                  WHERE s.tenant_id = m.tenant_id AND s.email = lower(m.recipient)) AS suppressed;

-- name: extend_leases
-- Heartbeat: keep this worker's leases alive while messages wait on throttles or slow
-- peers. Matching on the owner means a lease another worker already took over is not
-- extended (the owner changed with it).
UPDATE messages
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE done_on = 'infinity' AND lease_owner = $1 AND status = 'sending';

-- name: record_outcomes
-- Write a batch of delivery outcomes, each with its event and (for hard bounces) its
-- suppression, in one statement and so one transaction. The lease token check makes a
-- late result from a worker whose lease was taken over a no-op: the newer outcome stands.
WITH outcome AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::int[], $5::timestamptz[],
                         $6::int[], $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::bool[])
        AS o(id, token, status, attempted, next_attempt_at, code, reply, enhanced,
             event_type, event_data, suppress)
), updated AS (
    UPDATE messages m
    SET status = o.status,
        attempts = m.attempts + o.attempted,
        next_attempt_at = coalesce(o.next_attempt_at, m.next_attempt_at),
        last_reply_code = coalesce(o.code, m.last_reply_code),
        last_reply = coalesce(o.reply, m.last_reply),
        enhanced_status = coalesce(o.enhanced, m.enhanced_status),
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,
        updated_at = now()
    FROM outcome o
    WHERE m.done_on = 'infinity' AND m.id = o.id AND m.lease_token = o.token
      AND m.status = 'sending'
    RETURNING m.id, m.tenant_id, m.campaign_id, m.recipient, m.attempts, m.possible_duplicate,
              o.event_type, o.event_data, o.suppress, o.reply
), events AS (
    INSERT INTO events (tenant_id, message_id, campaign_id, type, data)
    SELECT tenant_id, id, campaign_id, event_type,
           event_data || jsonb_build_object('attempt', attempts,
                                            'possible_duplicate', possible_duplicate)
    FROM updated WHERE event_type IS NOT NULL
), suppressed AS (
    INSERT INTO suppressions (tenant_id, email, reason, detail)
    SELECT tenant_id, lower(recipient), 'hard_bounce', reply FROM updated WHERE suppress
    ON CONFLICT DO NOTHING
)
SELECT id FROM updated;

-- name: release
-- Give messages back without an outcome (shutdown, or a destination that is backed off): no
-- attempt is counted and no event written; they are due again at $3. $4 marks them possible
-- duplicates: released mid-transaction, the peer may already have accepted them. A message of
-- a campaign paused meanwhile (by hand or by the circuit breaker) joins its paused messages,
-- for the campaign's resume to bring back; so does one of a sending domain or tenant the
-- breaker paused (sending_holds, migration 0031), for that pause's resume.
UPDATE messages
SET status = CASE WHEN campaign_id IS NOT NULL
                       AND EXISTS (SELECT 1 FROM campaigns c
                                   WHERE c.id = messages.campaign_id AND c.status = 'paused')
                  THEN 'paused'
                  WHEN EXISTS (SELECT 1 FROM sending_holds h
                               WHERE h.tenant_id = messages.tenant_id
                                 AND (h.scope = 'tenant'
                                      OR h.key = lower(split_part(messages.from_email, '@', 2))))
                  THEN 'paused'
                  WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
    next_attempt_at = $3,
    possible_duplicate = possible_duplicate OR $4,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE done_on = 'infinity' AND id = ANY($1::bigint[]) AND lease_token = ANY($2::uuid[])
  AND status = 'sending';

-- name: sending_domain_keys
-- A domain's DKIM keys, newest first: the composer signs with the newest of each algorithm
-- (so adding a selector rotates), `domains show` lists them all. Served by the
-- (domain, selector) unique index.
SELECT tenant_id, selector, algorithm, private_key, public_key, created_at
FROM sending_domains
WHERE domain = $1
ORDER BY created_at DESC, id DESC;

-- name: signing_keys
-- The signer's view of sending_domain_keys: each key also under the account's test-mode
-- tenant row, since a domain belongs to the account and signs the mail of both its modes.
SELECT d.tenant_id, t.id AS test_tenant_id, d.selector, d.algorithm, d.private_key,
       d.public_key, d.created_at
FROM sending_domains d
LEFT JOIN tenants t ON t.live_tenant_id = d.tenant_id
WHERE d.domain = $1
ORDER BY d.created_at DESC, d.id DESC;

-- name: aligned_domains
-- The domain's own return path and tracking host, each once its DNS check passed
-- (penguinmails/deliverability.py); NULL: the global [mta] bounce_domain / [tracker] base_url.
SELECT CASE WHEN return_path_verified THEN return_path_domain END AS return_path,
       CASE WHEN tracking_verified THEN tracking_domain END AS tracking
FROM domain_verifications
WHERE domain = $1;

-- name: lock_sending_domain
-- Serialises `domains add` for one domain (held to the end of the transaction), so two
-- tenants cannot both claim a domain that neither had a row for yet.
SELECT pg_advisory_xact_lock(hashtextextended('penguinmails:sending_domain:' || $1, 0));

-- name: insert_sending_domain_key
-- One key; the private key arrives already sealed (mta.domains.seal_key).
INSERT INTO sending_domains (tenant_id, domain, selector, algorithm, private_key, public_key)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id;

-- name: queue_depth_by_status
-- For /metrics on every scrape: served by the partial indexes, so cheap however large the
-- table of finished messages grows.
SELECT 'queued' AS status, count(*) AS messages FROM messages
    WHERE done_on = 'infinity' AND status IN ('queued', 'deferred') AND status = 'queued'
UNION ALL
SELECT 'deferred', count(*) FROM messages
    WHERE done_on = 'infinity' AND status IN ('queued', 'deferred') AND status = 'deferred'
UNION ALL
SELECT 'sending', count(*) FROM messages WHERE done_on = 'infinity' AND status = 'sending';

-- name: ensure_connection_slots
-- Slot rows 0..$2-1 for a domain, created once per domain per process before the first claim
-- (a row inserted in the same statement as the claim would not be visible to it).
INSERT INTO mta_connection_slots (domain, slot)
SELECT $1, generate_series(0, $2 - 1)
ON CONFLICT DO NOTHING;

-- name: acquire_connection_slot
-- Take the lowest free (or expired) slot below this process's cap for the domain. SKIP LOCKED
-- lets processes racing for slots each get a different one instead of waiting.
UPDATE mta_connection_slots s
SET owner = $3, expires_at = now() + make_interval(secs => $4)
FROM (
    SELECT domain, slot FROM mta_connection_slots
    WHERE domain = $1 AND slot < $2 AND (owner IS NULL OR expires_at < now())
    ORDER BY slot
    LIMIT 1
    FOR UPDATE SKIP LOCKED
) free
WHERE s.domain = free.domain AND s.slot = free.slot
RETURNING s.slot;

-- name: release_connection_slot
UPDATE mta_connection_slots SET owner = NULL, expires_at = NULL
WHERE domain = $1 AND slot = $2 AND owner = $3;

-- name: extend_connection_slots
-- Heartbeat, with the message leases: this process's connections are still open.
UPDATE mta_connection_slots SET expires_at = now() + make_interval(secs => $2)
WHERE owner = $1;

-- name: release_all_connection_slots
-- Shutdown: give back whatever this process still holds.
UPDATE mta_connection_slots SET owner = NULL, expires_at = NULL WHERE owner = $1;

-- sandbox inbox ------------------------------------------------------------------------

-- name: sink_message
-- What the capture sink checks at MAIL FROM about the queue message a signed return path
-- names: that it exists, is a test-mode message, is being delivered now, and its recipient.
-- Primary-key probe.
SELECT id, tenant_id, recipient, sandbox, status FROM messages WHERE id = $1;

-- name: capture_sandbox_message
-- The capture sink's store, tied to the queue message its signed return path names ($4,
-- checked at MAIL FROM) and filed under that message's tenant as the messages row has it,
-- in one statement: one round trip before the 250. A primary-key probe on messages.
INSERT INTO sandbox_messages (mail_from, rcpt_tos, data, message_id, tenant_id)
VALUES ($1, $2, $3, $4, (SELECT tenant_id FROM messages WHERE id = $4))
RETURNING id, tenant_id;

-- name: process_seen
-- Presence heartbeat: this process is alive now.
INSERT INTO mta_processes (owner, seen_at) VALUES ($1, now())
ON CONFLICT (owner) DO UPDATE SET seen_at = now();

-- name: live_processes
-- How many MTA processes share the database (seen within $1 seconds); stale rows of dead
-- processes stop counting by age and are cleared now and then by the same call's caller.
SELECT count(*) FROM mta_processes WHERE seen_at > now() - make_interval(secs => $1);

-- name: forget_process
DELETE FROM mta_processes WHERE owner = $1 OR seen_at < now() - interval '1 day';

-- name: attachment_contents
-- The bytes of every attachment a claimed batch carries, each once however many of the
-- batch's messages share it: one query per batch, not one per message.
SELECT id, content FROM attachments WHERE id = ANY($1::bigint[]);

-- name: mta_sts_policy
-- A receiver's cached MTA-STS policy (mta/mtasts.py), read when the process has none in
-- memory. Primary-key probe.
SELECT policy_id, mode, mx, max_age, expires_at FROM mta_sts_policies WHERE domain = $1;

-- name: store_mta_sts_policy
-- A policy fetched successfully replaces the cached one (never a failed fetch).
INSERT INTO mta_sts_policies (domain, policy_id, mode, mx, max_age, fetched_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (domain) DO UPDATE
SET policy_id = EXCLUDED.policy_id, mode = EXCLUDED.mode, mx = EXCLUDED.mx,
    max_age = EXCLUDED.max_age, fetched_at = EXCLUDED.fetched_at,
    expires_at = EXCLUDED.expires_at;

-- name: identity_relay
-- A sending identity's own relay (migration 0030), read when a claimed message is sent
-- through it and cached for a short while. Primary-key probe.
SELECT public_id, relay_host, relay_port, relay_username, relay_password
FROM identities WHERE id = $1;
