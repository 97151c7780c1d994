"""The service layer: use cases called by the transports and the workers; it calls the adapters."""
