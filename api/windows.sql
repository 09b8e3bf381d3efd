-- Campaigns' sending windows (api/windows.py, api/campaigns.py, api/sends.py).

-- name: set_campaign_window
-- Written beside insert_campaign and update_draft, so those stay as they are.
UPDATE campaigns
SET window_days = $2, window_start = $3, window_end = $4, window_zone = coalesce($5, 'UTC'),
    window_skip = coalesce($6::date[], '{}'), window_holidays = $7,
    window_holiday_dates = coalesce($8::date[], '{}'), window_holidays_until = $9
WHERE id = $1;

-- name: campaign_into_window
-- The messages $1 just queued for campaign $2 (in the same transaction, so the MTA never sees
-- them due outside it) moved into its window, in the recipient's zone: the contact's
-- custom_fields.timezone, else the recipient's personalization.timezone, else the window's.
-- A due time inside the window is kept; one outside moves to the next window, spread across
-- it (next_in_window, migration 0028), skipping the window's dates and holidays. A campaign
-- without a window changes nothing.
UPDATE messages m
SET next_attempt_at = next_in_window(
        m.next_attempt_at,
        coalesce((SELECT ct.custom_fields ->> 'timezone' FROM contacts ct
                  WHERE ct.tenant_id = m.tenant_id AND ct.email = lower(m.recipient)),
                 m.personalization ->> 'timezone'),
        c.window_zone, c.window_days, c.window_start, c.window_end,
        c.window_skip || c.window_holiday_dates, random())
FROM campaigns c
WHERE c.id = $2 AND c.window_days IS NOT NULL AND m.id = ANY ($1::bigint[]);

-- name: campaign_holidays_reach
-- For a campaign whose window skips a country's holidays: how far they are computed, and the
-- latest due time among the messages $2 just queued (a send_at years ahead may pass it).
SELECT c.window_holidays, c.window_holidays_until,
       (SELECT max(m.next_attempt_at) FROM messages m WHERE m.id = ANY ($2::bigint[]))
           AS last_due
FROM campaigns c
WHERE c.id = $1 AND c.window_days IS NOT NULL AND c.window_holidays IS NOT NULL;

-- name: set_campaign_holidays
UPDATE campaigns SET window_holiday_dates = $2, window_holidays_until = $3 WHERE id = $1;
