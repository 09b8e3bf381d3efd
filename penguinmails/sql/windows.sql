-- Sending windows' holidays (penguinmails/windows.py).

-- name: stale_sequences
-- Active sequences whose holiday dates end before $1 (a year from now).
SELECT id, window_holidays FROM sequences
WHERE status = 'active' AND window_holidays IS NOT NULL
  AND (window_holidays_until IS NULL OR window_holidays_until < $1);

-- name: stale_campaigns
-- Campaigns that may still queue or send (a draft, sending, paused) whose holiday dates end
-- before $1.
SELECT id, window_holidays FROM campaigns
WHERE status IN ('draft', 'sending', 'paused') AND window_holidays IS NOT NULL
  AND (window_holidays_until IS NULL OR window_holidays_until < $1);

-- name: set_sequences_holidays
UPDATE sequences SET window_holiday_dates = $2, window_holidays_until = $3 WHERE id = $1;

-- name: set_campaigns_holidays
UPDATE campaigns SET window_holiday_dates = $2, window_holidays_until = $3 WHERE id = $1;
