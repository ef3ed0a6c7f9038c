"""dlqctl: the small, quick command-line client for dlqd."""
