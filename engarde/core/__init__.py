"""Pure, synchronous decision logic. No trio, no pyroute2, no quart, no clocks: callers pass `now`."""
