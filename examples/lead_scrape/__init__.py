"""The lead scrape pipeline, a second pipeline built only on stepflow's core API."""
