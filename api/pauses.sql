-- What the circuit breaker paused beyond campaigns and identities: sending domains and whole
-- tenants (sending_holds, migration 0031), listed and lifted by api/pauses.py.

-- name: list_pauses
SELECT public_id, scope, key, reason, created_at FROM sending_holds
WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC;

-- name: lift_pause
-- The hold goes first, in a statement of its own, so that the messages' trigger
-- (messages_held) no longer sees it when release_pause runs in the same transaction.
DELETE FROM sending_holds WHERE tenant_id = $1 AND public_id = $2
RETURNING public_id, scope, key, reason, created_at;

-- name: release_pause
-- Its messages go again unless another hold still covers them (the trigger keeps those
-- paused); a message whose campaign is paused stays with it.
UPDATE messages m
SET status = CASE WHEN m.attempts > 0 THEN 'deferred' ELSE 'queued' END,
    held_reason = NULL, next_attempt_at = least(m.next_attempt_at, now()), updated_at = now()
WHERE m.tenant_id = $1 AND m.status = 'paused' AND m.held_reason = 'sending paused'
  AND ($2 = 'tenant' OR lower(split_part(m.from_email, '@', 2)) = $3)
  AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id AND c.status = 'paused');
