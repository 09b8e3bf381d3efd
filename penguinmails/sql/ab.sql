-- A/B variants' results and the winner's decision (penguinmails/ab.py).

-- name: campaign_variant_stats
-- Per variant of campaign $1: its messages, those delivered (accepted and not bounced after),
-- and those with at least one open, click, reply or bounce (distinct messages). With $2, only
-- the messages delivered by then (the sample a decision is made on). Reads the campaign's
-- messages (messages_campaign_idx) and their events by events' message index: the cost grows
-- with the campaign, unlike the rollups, which have no variant dimension.
SELECT m.variant AS name,
       count(*) AS sent,
       count(*) FILTER (WHERE m.status = 'sent') AS delivered,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.opened')) AS opened,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.clicked')) AS clicked,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.replied')) AS replied,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.bounced')) AS bounced
FROM messages m
WHERE m.campaign_id = $1 AND m.variant IS NOT NULL
  AND ($2::timestamptz IS NULL OR (m.status = 'sent' AND m.sent_at <= $2))
GROUP BY m.variant;

-- name: step_variant_stats
-- The same per step and variant of sequence $1, through its enrolments' step messages.
SELECT sm.step, m.variant AS name,
       count(*) AS sent,
       count(*) FILTER (WHERE m.status = 'sent') AS delivered,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.opened')) AS opened,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.clicked')) AS clicked,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.replied')) AS replied,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.bounced')) AS bounced
FROM sequence_enrollments e
JOIN sequence_messages sm ON sm.enrollment_id = e.id
JOIN messages m ON m.id = sm.message_id
WHERE e.sequence_id = $1 AND m.variant IS NOT NULL
  AND ($2::timestamptz IS NULL OR (m.status = 'sent' AND m.sent_at <= $2))
GROUP BY sm.step, m.variant;

-- name: undecided_campaigns
-- Sending campaigns whose A/B test has no winner yet (a paused one waits for its resume).
SELECT id FROM campaigns
WHERE ab_test IS NOT NULL AND ab_winner IS NULL AND status = 'sending'
ORDER BY id;

-- name: lock_undecided_campaign
-- Locked for the decision; skipped if another API process's tick holds it (or a pause,
-- a cancel, a resume is changing it right now: the next tick looks again).
SELECT id, tenant_id, variants, ab_test FROM campaigns
WHERE id = $1 AND ab_test IS NOT NULL AND ab_winner IS NULL AND status = 'sending'
FOR UPDATE SKIP LOCKED;

-- name: campaign_test_waiting
-- Whether any test message of campaign $1 may still add to the sample: not final yet, or
-- delivered after the cutoff $2 (its replies and clicks may still come). When none may, the
-- decision is made on the numbers there are, so held recipients are never left waiting.
SELECT EXISTS (
    SELECT 1 FROM messages
    WHERE campaign_id = $1 AND variant IS NOT NULL
      AND (status IN ('queued', 'deferred', 'sending', 'paused')
           OR (status = 'sent' AND sent_at > $2)));

-- name: release_held
-- The decision on campaign $1 ($2, recorded as it is) and its held recipients released with
-- the winner's ($3) content, part by part over the base content they were held with, due at
-- once ($4, the clock) or at their own later due time, moved into the campaign's sending
-- window as campaign_into_window (api/windows.sql) does; with the `ab_test.decided` event.
WITH decided AS (
    UPDATE campaigns SET ab_winner = $2, updated_at = now()
    WHERE id = $1
    RETURNING id, tenant_id, public_id, variants, window_zone, window_days, window_start,
              window_end, window_skip || window_holiday_dates AS window_skip
), released AS (
    UPDATE messages m
    SET status = 'queued', variant = $3,
        subject = coalesce(w.v ->> 'subject', m.subject),
        -- A message sent through an identity keeps its signature under the winner's content.
        html_body = CASE WHEN w.v ->> 'html' IS NULL THEN m.html_body
                         ELSE with_signature(w.v ->> 'html', (SELECT i.signature_html
                              FROM identities i WHERE i.id = m.identity_id)) END,
        text_body = CASE WHEN w.v ->> 'text' IS NULL THEN m.text_body
                         ELSE with_text_signature(w.v ->> 'text', (SELECT i.signature_text
                              FROM identities i WHERE i.id = m.identity_id)) END,
        next_attempt_at = next_in_window(
            greatest(m.next_attempt_at, $4::timestamptz),
            coalesce((SELECT ct.custom_fields ->> 'timezone' FROM contacts ct
                      WHERE ct.tenant_id = m.tenant_id AND ct.email = lower(m.recipient)),
                     m.personalization ->> 'timezone'),
            d.window_zone, d.window_days, d.window_start, d.window_end, d.window_skip,
            random()),
        updated_at = now()
    FROM decided d
    CROSS JOIN LATERAL (SELECT x FROM jsonb_array_elements(d.variants) x
                        WHERE x ->> 'name' = $3) w(v)
    WHERE m.campaign_id = d.id AND m.status = 'held'
    RETURNING m.id
)
INSERT INTO events (tenant_id, campaign_id, type, data)
SELECT d.tenant_id, d.id, 'ab_test.decided',
       $2::jsonb || jsonb_build_object('scope', 'campaign',
                                       'released', (SELECT count(*) FROM released))
FROM decided d
RETURNING (data ->> 'released')::bigint;

-- name: undecided_steps
-- Steps with variants of active sequences with an A/B test and no winner yet.
SELECT s.sequence_id, s.position, s.variants, q.ab_test, q.tenant_id, q.public_id
FROM sequence_steps s
JOIN sequences q ON q.id = s.sequence_id
WHERE q.ab_test IS NOT NULL AND q.status = 'active' AND s.ab_winner IS NULL
  AND jsonb_array_length(s.variants) > 0
ORDER BY s.sequence_id, s.position;

-- name: decide_step
-- Records the winner of step $2 of sequence $1 once (a concurrent tick's second write finds
-- it decided and writes nothing), with its `ab_test.decided` event. The scheduler gives every
-- step message created from now on the winner (step_variant, migration 0032).
WITH decided AS (
    UPDATE sequence_steps s SET ab_winner = $3
    WHERE s.sequence_id = $1 AND s.position = $2 AND s.ab_winner IS NULL
    RETURNING s.sequence_id
)
INSERT INTO events (tenant_id, type, data)
SELECT q.tenant_id, 'ab_test.decided',
       $3::jsonb || jsonb_build_object('scope', 'sequence_step', 'sequence_id', q.public_id,
                                       'step', $2::int)
FROM decided d JOIN sequences q ON q.id = d.sequence_id
RETURNING id;
