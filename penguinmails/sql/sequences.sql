-- Sequences' scheduler (penguinmails/sequences.py): turns due steps into queued messages.

-- name: schedule_steps
-- One statement per batch, so a batch is all in or all out. The running enrolments ($2:
-- only these, else any) whose last step was accepted by its receiver (or that have none
-- yet), locked and skipped if another scheduler holds them, get their next step queued with
-- its `email.sent` event and its sequence_messages row (the primary key there refuses a step
-- queued twice, whatever the race); its due time is the previous step's sent_at (step 1:
-- the enrolment) plus the step's delay, so the MTA's claim does the waiting. An enrolment
-- whose last step was sent and which has no next one is completed; one whose last message
-- ended otherwise (failed, suppressed, cancelled, bounced) is stopped with that reason.
-- The recipient and personalization are the contact's now (email, first_name, last_name,
-- company, then its custom fields); sandbox follows the tenant's mode, so test mode stays
-- test mode. Follow-ups answer step 1: In-Reply-To and References carry its Message-ID. A
-- due time outside the sequence's sending window moves into the next one (next_in_window,
-- migration 0028), in the contact's time zone, skipping its dates and its country's
-- holidays (migration 0033). $3 is the clock (NULL: now()), for tests.
-- $4: a run's batches go in enrolment order, each after the last one's highest id (keyset),
-- so a run reads each waiting enrolment once rather than once per batch.
-- A step with A/B variants gives each message one by weight, or the decided winner
-- (step_variant, migration 0032); its parts replace the step's own, part by part.
-- The conditions on the enrolment itself are what a concurrent scheduler's commit is
-- rechecked against (FOR UPDATE rechecks the locked row's new version, not the joined
-- message's): "no message" is read from e.step_message_id, never from the outer join, or an
-- enrolment just advanced by the other scheduler would look like one whose message is gone.
WITH due AS (
    SELECT e.id, e.tenant_id, e.sequence_id, e.contact_id, e.step, e.created_at,
           e.thread_message_id, e.thread_subject, e.identity_id, m.status AS last_status,
           m.sent_at AS last_sent_at
    FROM sequence_enrollments e
    LEFT JOIN messages m ON m.id = e.step_message_id
    WHERE e.status = 'active'
      AND ($2::bigint[] IS NULL OR e.id = ANY ($2::bigint[]))
      AND ($4::bigint IS NULL OR e.id > $4)
      AND (e.step = 0 OR e.step_message_id IS NULL
           OR m.status IN ('sent', 'bounced', 'failed', 'suppressed', 'cancelled'))
    ORDER BY e.id
    LIMIT $1
    FOR UPDATE OF e SKIP LOCKED
), nxt AS (
    SELECT d.id, d.tenant_id, s.position, coalesce(idn.email, q.from_email) AS from_email,
           -- The message's key, taken now so that the rows linked to it below need not find
           -- it again among the inserted ones.
           nextval(pg_get_serial_sequence('messages', 'id')) AS msg_id,
           CASE WHEN idn.id IS NULL THEN q.from_name ELSE idn.name END AS from_name,
           q.settings, idn.id AS identity_id,
           c.email AS recipient, split_part(c.email, '@', 2) AS recipient_domain,
           coalesce(c.custom_fields, '{}') || jsonb_strip_nulls(jsonb_build_object(
               'email', c.email, 'first_name', c.first_name, 'last_name', c.last_name,
               'company', c.company)) AS personalization,
           coalesce(pv.v ->> 'subject',
                    CASE WHEN s.position = 1 OR s.subject IS NOT NULL
                         THEN coalesce(s.subject, '')
                         ELSE 'Re: ' || coalesce(d.thread_subject, '') END) AS subject,
           with_signature(coalesce(pv.v ->> 'html', s.html_body), idn.signature_html)
               AS html_body,
           with_text_signature(coalesce(pv.v ->> 'text', s.text_body), idn.signature_text)
               AS text_body,
           pv.v ->> 'name' AS variant,
           CASE WHEN d.thread_message_id IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('In-Reply-To', '<' || d.thread_message_id || '>',
                                        'References', '<' || d.thread_message_id || '>') END
               AS headers,
           CASE WHEN s.business_days
                THEN add_business_days(
                         CASE WHEN d.step = 0 THEN d.created_at ELSE d.last_sent_at END,
                         s.delay_days)
                ELSE CASE WHEN d.step = 0 THEN d.created_at ELSE d.last_sent_at END
                     + make_interval(days => s.delay_days)
                END + s.delay_hours * interval '1 hour' AS due_at,
           t.mode = 'test' AS sandbox,
           c.custom_fields ->> 'timezone' AS zone, q.window_zone, q.window_days,
           q.window_start, q.window_end, q.window_skip || q.window_holiday_dates AS window_skip,
           replace(gen_random_uuid()::text, '-', '') || '@'
               || lower(split_part(coalesce(idn.email, q.from_email), '@', 2)) AS rfc_message_id
    FROM due d
    JOIN sequences q ON q.id = d.sequence_id
    JOIN sequence_steps s ON s.sequence_id = d.sequence_id AND s.position = d.step + 1
    CROSS JOIN LATERAL (SELECT step_variant(s.variants, s.ab_winner, random()) AS v) pv
    JOIN contacts c ON c.id = d.contact_id
    JOIN tenants t ON t.id = d.tenant_id
    -- Its turn in the pool (round robin by enrolment), computed once per enrolment (OFFSET 0
    -- keeps it from being folded into the identity scan, where it would be re-read per row).
    CROSS JOIN LATERAL (
        SELECT q.settings -> 'identities'
               ->> (d.id % greatest(jsonb_array_length(q.settings -> 'identities'), 1))::int
               AS turn
        OFFSET 0
    ) pick
    -- The enrolment's identity (kept from its first step, whatever its state now), else the
    -- pool's next active one.
    LEFT JOIN LATERAL (
        (SELECT i.id, i.email, i.name, i.signature_html, i.signature_text
         FROM identities i WHERE i.id = d.identity_id)
        UNION ALL
        -- Its turn in the pool, when that identity is active (one index probe)...
        (SELECT i.id, i.email, i.name, i.signature_html, i.signature_text
         FROM identities i
         WHERE d.identity_id IS NULL AND i.tenant_id = d.tenant_id AND i.status = 'active'
           AND i.public_id = pick.turn)
        UNION ALL
        -- ...else the next active one after it.
        (SELECT i.id, i.email, i.name, i.signature_html, i.signature_text
         FROM jsonb_array_elements_text(q.settings -> 'identities') WITH ORDINALITY
              AS p (public_id, n)
         JOIN identities i ON i.tenant_id = d.tenant_id AND i.public_id = p.public_id
                          AND i.status = 'active'
         WHERE d.identity_id IS NULL
         ORDER BY (p.n - 1 + jsonb_array_length(q.settings -> 'identities')
                   - d.id % jsonb_array_length(q.settings -> 'identities'))
                  % jsonb_array_length(q.settings -> 'identities')
         LIMIT 1)
        LIMIT 1
    ) idn ON true
    WHERE q.status = 'active' AND (d.step = 0 OR d.last_status = 'sent')
      -- A pool with no active identity left: the step waits rather than go from another.
      AND (idn.id IS NOT NULL OR jsonb_typeof(q.settings -> 'identities') IS DISTINCT FROM 'array'
           OR jsonb_array_length(q.settings -> 'identities') = 0)
), queued AS (
    INSERT INTO messages (id, tenant_id, message_id, from_email, from_name, recipient,
                          recipient_domain, subject, text_body, html_body, headers,
                          personalization, settings, next_attempt_at, sandbox, priority,
                          identity_id, variant)
    OVERRIDING SYSTEM VALUE
    SELECT msg_id, tenant_id, rfc_message_id, from_email, from_name, recipient, recipient_domain,
           subject, text_body, html_body, headers, personalization, settings,
           next_in_window(greatest(due_at, coalesce($3::timestamptz, now())), zone,
                          window_zone, window_days, window_start, window_end, window_skip,
                          random()),
           sandbox, 1, identity_id, variant
    FROM nxt
    RETURNING id, tenant_id, message_id, subject, next_attempt_at,
              EXISTS (SELECT 1 FROM suppressions s
                      WHERE s.tenant_id = messages.tenant_id
                        AND s.email = lower(messages.recipient)) AS suppressed
), linked AS (
    INSERT INTO sequence_messages (enrollment_id, step, message_id)
    SELECT n.id, n.position, n.msg_id FROM nxt n
    RETURNING enrollment_id
), sent AS (
    INSERT INTO events (tenant_id, message_id, type, data)
    SELECT q.tenant_id, q.id, 'email.sent', jsonb_build_object('send_at', q.next_attempt_at)
    FROM queued q
    WHERE NOT q.suppressed
    ORDER BY q.id
), advanced AS (
    UPDATE sequence_enrollments e
    SET step = n.position, step_message_id = n.msg_id,
        thread_message_id = coalesce(e.thread_message_id, n.rfc_message_id),
        thread_subject = coalesce(e.thread_subject, n.subject),
        identity_id = coalesce(e.identity_id, n.identity_id),
        updated_at = now()
    FROM nxt n
    WHERE e.id = n.id
    RETURNING e.id
), ended AS (
    UPDATE sequence_enrollments e
    SET status = CASE WHEN d.last_status = 'sent' THEN 'completed' ELSE 'stopped' END,
        stop_reason = CASE WHEN d.last_status = 'sent' THEN NULL
                           WHEN d.last_status = 'bounced' THEN 'bounce'
                           ELSE coalesce(d.last_status, 'message deleted') END,
        ended_at = now(), updated_at = now()
    FROM due d
    WHERE e.id = d.id AND d.step > 0 AND NOT EXISTS (SELECT 1 FROM nxt WHERE nxt.id = d.id)
    RETURNING e.status
)
SELECT (SELECT count(*) FROM queued) AS queued,
       (SELECT count(*) FROM ended WHERE status = 'completed') AS completed,
       (SELECT count(*) FROM ended WHERE status = 'stopped') AS stopped,
       (SELECT count(*) FROM due) AS scanned, (SELECT max(id) FROM due) AS last_id;

-- name: sequences_status
-- For `penguinmails sequences`: every active sequence (of one tenant, $1, or all) with its
-- enrolments by status, the step messages sent and waiting, and the replies among them; and
-- its steps with A/B variants: `2:B` (step 2's winner is B), `2:testing` (its A/B test has
-- not decided yet), `2:split` (variants by weight, no test), `-` (no variants).
SELECT t.name AS tenant, t.mode, q.public_id, q.name,
       count(DISTINCT e.id) FILTER (WHERE e.status = 'active') AS active,
       count(DISTINCT e.id) FILTER (WHERE e.status = 'completed') AS completed,
       count(DISTINCT e.id) FILTER (WHERE e.status = 'stopped') AS stopped,
       count(DISTINCT m.id) FILTER (WHERE m.status = 'sent') AS sent,
       count(DISTINCT m.id) FILTER (WHERE m.status IN ('queued', 'deferred', 'sending'))
           AS waiting,
       count(DISTINCT i.id) AS replies,
       (SELECT coalesce(string_agg(
                   s.position || ':' || coalesce(s.ab_winner ->> 'variant',
                                                 CASE WHEN q.ab_test IS NULL THEN 'split'
                                                      ELSE 'testing' END),
                   ',' ORDER BY s.position), '-')
        FROM sequence_steps s
        WHERE s.sequence_id = q.id AND jsonb_array_length(s.variants) > 0) AS ab
FROM sequences q
JOIN tenants t ON t.id = q.tenant_id
LEFT JOIN sequence_enrollments e ON e.sequence_id = q.id
LEFT JOIN sequence_messages sm ON sm.enrollment_id = e.id
LEFT JOIN messages m ON m.id = sm.message_id
LEFT JOIN inbound_emails i ON i.message_id = sm.message_id
WHERE q.status = 'active' AND ($1::text IS NULL OR t.name = $1)
GROUP BY t.name, t.mode, q.id
ORDER BY t.name, t.mode, q.name;
