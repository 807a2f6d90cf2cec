"""Monitoring: the drift reference, checks of logged traffic, drift, and the schedules that run them."""
