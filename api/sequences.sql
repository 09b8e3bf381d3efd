-- Sequences, their steps and enrolments (api/sequences.py). The scheduler that queues the
-- steps is in penguinmails/sql/sequences.sql; stopping is a trigger (migration 0027).

-- name: insert_sequence
-- A name taken by another active sequence of the tenant is a unique violation (409).
INSERT INTO sequences (tenant_id, name, from_email, from_name, stop_on, settings,
                       window_days, window_start, window_end, window_zone, window_skip,
                       window_holidays, window_holiday_dates, window_holidays_until)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, 'UTC'), coalesce($11::date[], '{}'),
        $12, coalesce($13::date[], '{}'), $14)
RETURNING id, public_id;

-- name: insert_steps
-- All of a sequence's steps in one statement, from parallel arrays in step order (the
-- variants as JSON text: a jsonb[] of JSON arrays would be read as a 2-D array).
INSERT INTO sequence_steps (sequence_id, position, delay_days, business_days, delay_hours,
                            subject, html_body, text_body, template_id, template_version,
                            variants)
SELECT $1, s.ordinality, s.days, s.business, s.hours, s.subject, s.html, s.text, s.template,
       s.version, s.variants::jsonb
FROM unnest($2::int[], $3::bool[], $4::float8[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::int[], $10::text[]) WITH ORDINALITY
     AS s(days, business, hours, subject, html, text, template, version, variants,
          ordinality);

-- name: set_sequence_ab
-- A sequence's A/B test, written beside insert_sequence and update_sequence.
UPDATE sequences SET ab_test = $2 WHERE id = $1;

-- name: delete_steps
-- Replacing the steps: enrolments keep their progress (the step number) and continue with
-- the new steps from the next one.
DELETE FROM sequence_steps WHERE sequence_id = $1;

-- name: get_sequence
-- By public id or, for trigger_sequence, by name ($3: whether $2 is a name); a name finds
-- only an active sequence.
SELECT id, public_id, name, from_email, from_name, stop_on, settings, status, created_at,
       updated_at, archived_at, window_days, window_start, window_end, window_zone,
       window_skip, ab_test, window_holidays, window_holiday_dates,
       window_holidays_until
FROM sequences
WHERE tenant_id = $1
  AND CASE WHEN $3::bool THEN name = $2 AND status = 'active' ELSE public_id = $2 END;

-- name: lock_sequence
-- Changes to a sequence take its row lock first, so two updates do not interleave.
SELECT id, public_id, name, from_email, from_name, stop_on, settings, status, window_days,
       window_start, window_end, window_zone, window_skip, ab_test, window_holidays, window_holiday_dates,
       window_holidays_until
FROM sequences WHERE tenant_id = $1 AND public_id = $2
FOR UPDATE;

-- name: get_steps
-- Steps of the sequences $1, in order.
SELECT sequence_id, position, delay_days, business_days, delay_hours, subject, html_body,
       text_body, template_id, template_version, variants, ab_winner
FROM sequence_steps WHERE sequence_id = ANY ($1::bigint[])
ORDER BY sequence_id, position;

-- name: list_sequences
-- Newest first, keyset-paginated on the public id through (tenant_id, public_id).
SELECT id, public_id, name, from_email, from_name, stop_on, settings, status, created_at,
       updated_at, archived_at, window_days, window_start, window_end, window_zone,
       window_skip, ab_test, window_holidays, window_holiday_dates,
       window_holidays_until
FROM sequences
WHERE tenant_id = $1 AND ($2::text IS NULL OR public_id < $2)
ORDER BY public_id DESC
LIMIT $3;

-- name: update_sequence
UPDATE sequences
SET name = $2, from_email = $3, from_name = $4, stop_on = $5, settings = $6,
    window_days = $7, window_start = $8, window_end = $9, window_zone = coalesce($10, 'UTC'),
    window_skip = coalesce($11::date[], '{}'), window_holidays = $12,
    window_holiday_dates = coalesce($13::date[], '{}'), window_holidays_until = $14,
    updated_at = now()
WHERE id = $1;

-- name: archive_sequence
-- Archived: no new enrolments; every running one stops, its waiting step cancelled.
WITH archived AS (
    UPDATE sequences SET status = 'archived', archived_at = now(), updated_at = now()
    WHERE id = $1 AND status = 'active'
    RETURNING id
)
SELECT sequence_stop(e.id, 'archived')
FROM sequence_enrollments e
WHERE e.sequence_id IN (SELECT id FROM archived) AND e.status = 'active';

-- name: contacts_by_id
-- The tenant's contacts among the public ids $2 (others are not found).
SELECT id, public_id, email, first_name, last_name, company, custom_fields
FROM contacts WHERE tenant_id = $1 AND public_id = ANY ($2::text[]);

-- name: ensure_contacts
-- Contacts by address, created if new; the no-op update makes RETURNING see existing ones.
INSERT INTO contacts (tenant_id, email)
SELECT $1, lower(e) FROM unnest($2::text[]) AS e
ON CONFLICT (tenant_id, email) DO UPDATE SET email = EXCLUDED.email
RETURNING id, public_id, email, first_name, last_name, company, custom_fields;

-- name: contacts_by_tag
-- Contacts with the tag (the GIN index) that may be enrolled in the sequence $3: none
-- running in it, nor (without re-enrolment, $4) ever enrolled. At most $5, so a call on a
-- huge tag enrols a bounded batch and the next call continues past it.
SELECT c.id, c.public_id, c.email, c.first_name, c.last_name, c.company, c.custom_fields
FROM contacts c
WHERE c.tenant_id = $1 AND c.tags @> ARRAY[$2::text]
  AND NOT EXISTS (SELECT 1 FROM sequence_enrollments e
                  WHERE e.sequence_id = $3 AND e.contact_id = c.id
                    AND (e.status = 'active' OR NOT $4::bool))
ORDER BY c.id
LIMIT $5;

-- name: tagged_enrolled
-- How many contacts with the tag were left out as already enrolled (contacts_by_tag).
SELECT count(*) FROM contacts c
WHERE c.tenant_id = $1 AND c.tags @> ARRAY[$2::text]
  AND EXISTS (SELECT 1 FROM sequence_enrollments e
              WHERE e.sequence_id = $3 AND e.contact_id = c.id
                AND (e.status = 'active' OR NOT $4::bool));

-- name: enrolled_contacts
-- Which of the contacts $2 already have an enrolment in the sequence $1 that blocks a new
-- one: a running one always, an ended one unless re-enrolment is asked for ($3).
SELECT contact_id FROM sequence_enrollments
WHERE sequence_id = $1 AND contact_id = ANY ($2::bigint[])
  AND (status = 'active' OR NOT $3::bool);

-- name: insert_enrollments
-- The running-enrolment unique index refuses a concurrent second enrolment (409).
INSERT INTO sequence_enrollments (tenant_id, sequence_id, contact_id)
SELECT $1, $2, c FROM unnest($3::bigint[]) AS c
RETURNING id;

-- name: get_enrollments
-- Enrolments by integer key, with their contact's id and address, in key order.
SELECT e.public_id AS id, q.public_id AS sequence_id, c.public_id AS contact_id, c.email,
       e.status, e.stop_reason, e.step, e.created_at, e.updated_at, e.ended_at
FROM sequence_enrollments e
JOIN sequences q ON q.id = e.sequence_id
JOIN contacts c ON c.id = e.contact_id
WHERE e.id = ANY ($1::bigint[])
ORDER BY e.id;

-- name: list_enrollments
-- Newest first, keyset on the public id, optionally one status; (tenant_id, public_id).
SELECT e.public_id AS id, q.public_id AS sequence_id, c.public_id AS contact_id, c.email,
       e.status, e.stop_reason, e.step, e.created_at, e.updated_at, e.ended_at
FROM sequence_enrollments e
JOIN sequences q ON q.id = e.sequence_id
JOIN contacts c ON c.id = e.contact_id
WHERE e.tenant_id = $1 AND e.sequence_id = $2
  AND ($3::text IS NULL OR e.public_id < $3)
  AND ($4::text IS NULL OR e.status = $4)
ORDER BY e.public_id DESC
LIMIT $5;

-- name: lock_enrollment
-- An enrolment of the sequence, locked: a manual stop and the scheduler do not interleave.
SELECT e.id, e.status
FROM sequence_enrollments e
JOIN sequences q ON q.id = e.sequence_id
WHERE e.tenant_id = $1 AND q.public_id = $2 AND e.public_id = $3
FOR UPDATE OF e;

-- name: stop_enrollment
-- Stops it and cancels its waiting step, as a reply would (migration 0027's sequence_stop).
SELECT sequence_stop($1, $2);

-- name: enrollment_counts
SELECT status, count(*) AS n FROM sequence_enrollments WHERE sequence_id = $1 GROUP BY status;

-- name: step_stats
-- Per step: its messages, how many were accepted (sent_at), and the messages with at least
-- one open, click, reply or bounce event (distinct messages, so a second open counts once);
-- enrolments stopped while at the step. Reads the sequence's own messages only, through
-- sequence_messages and events' message index.
SELECT s.position AS step,
       count(sm.message_id) AS queued,
       count(m.sent_at) AS sent,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.opened')) AS opened,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.clicked')) AS clicked,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.replied')) AS replied,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM events v WHERE v.message_id = m.id
                                      AND v.type = 'email.bounced')) AS bounced,
       (SELECT count(*) FROM sequence_enrollments e
        WHERE e.sequence_id = $1 AND e.status = 'stopped' AND e.step = s.position) AS stopped
FROM sequence_steps s
LEFT JOIN sequence_enrollments en ON en.sequence_id = s.sequence_id
LEFT JOIN sequence_messages sm ON sm.enrollment_id = en.id AND sm.step = s.position
LEFT JOIN messages m ON m.id = sm.message_id
WHERE s.sequence_id = $1
GROUP BY s.position
ORDER BY s.position;

-- name: campaign_by_id
SELECT id FROM campaigns WHERE tenant_id = $1 AND public_id = $2;

-- name: campaign_contacts
-- The recipients of campaign $2 (its messages, and the list a draft holds) as contacts,
-- created if new (as ensure_contacts does), at most $3, in address order.
WITH addresses AS (
    SELECT DISTINCT lower(a.email) AS email FROM (
        SELECT recipient AS email FROM messages WHERE tenant_id = $1 AND campaign_id = $2
        UNION
        SELECT r ->> 'email' FROM campaigns c, jsonb_array_elements(c.recipients) r
        WHERE c.tenant_id = $1 AND c.id = $2
    ) a
    ORDER BY 1
    LIMIT $3
)
INSERT INTO contacts (tenant_id, email)
SELECT $1, email FROM addresses
ON CONFLICT (tenant_id, email) DO UPDATE SET email = EXCLUDED.email
RETURNING id, public_id, email, first_name, last_name, company, custom_fields;
