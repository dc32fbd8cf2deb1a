"""`frugal serve`: the champion behind an API with keys, plans, metering and feedback."""
