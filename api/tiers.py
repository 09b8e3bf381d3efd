"""What each plan tier includes, as the product documentation's table puts it.

| tier         | requests/hour | includes                                                 |
|--------------|---------------|----------------------------------------------------------|
| free         | 1,000         | basic sending (single messages, drafts), limited analytics |
| starter      | 10,000        | full sending (campaigns, bulk), basic analytics          |
| professional | 100,000       | advanced analytics, conversions, AI optimisation, webhooks |
| enterprise   | 1,000,000     | everything                                               |

A route declares the lowest tier that may call it; a caller below it gets 403
`TIER_REQUIRED` naming that tier, before the call counts against its rate limit. The tier
is the account's: test mode has the same features (so what works in test works in live) and
only relaxed rate limits. Within analytics, "limited" and "basic" are parts of one answer,
left out below their tier (api.analytics).
"""

from __future__ import annotations

from typing import Literal

from api.errors import ApiError

Tier = Literal["free", "starter", "professional", "enterprise"]
TIERS: tuple[Tier, ...] = ("free", "starter", "professional", "enterprise")


def at_least(tier: str, needed: Tier) -> bool:
    """Unknown tiers (a row edited by hand) count as free."""
    have = TIERS.index(tier) if tier in TIERS else 0
    return have >= TIERS.index(needed)


def tier_required(needed: Tier, have: str, what: str) -> ApiError:
    return ApiError(
        403,
        "TIER_REQUIRED",
        f"{what} needs the {needed} tier or above (this account is on {have})",
        [{"field": "tier", "message": f"requires {needed}"}],
    )
