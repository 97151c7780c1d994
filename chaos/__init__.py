"""Chaos suite for notiflow: fault injection through a Toxiproxy-compatible server, scenarios, report."""
