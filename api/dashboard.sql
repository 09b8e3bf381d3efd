-- name: user_is_operator
-- Whether a dashboard user may see the installation's queue (migration 0035).
SELECT operator FROM users WHERE id = $1;
