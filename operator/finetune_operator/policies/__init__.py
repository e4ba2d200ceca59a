"""Run policies, one small module each: suspend, deadline, TTL and fields frozen while running."""
