-- Whether a person opened, clicked and replied to one message: the per-message engagement the
-- content analysis and ai_insights count (api/ai.sql), in one place. Machine opens and clicks
-- (proxies, scanners) are not a person's interest. Each answer is one probe of
-- events_message_idx that stops at the first match. Declared as a table of one row so a
-- query's `CROSS JOIN LATERAL message_engagement(m.id)` is inlined into its plan like the
-- EXISTS it replaces, not called row by row.
CREATE FUNCTION message_engagement(message bigint)
RETURNS TABLE (opened boolean, clicked boolean, replied boolean)
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM events e WHERE e.message_id = message
                                            AND e.type = 'email.opened' AND NOT e.is_machine),
           EXISTS (SELECT 1 FROM events e WHERE e.message_id = message
                                            AND e.type = 'email.clicked' AND NOT e.is_machine),
           EXISTS (SELECT 1 FROM events e WHERE e.message_id = message
                                            AND e.type = 'email.replied')
$$;
