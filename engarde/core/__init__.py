"""Pure, synchronous decisions: no trio, no pyroute2, no quart, no clocks (callers pass now)."""
