"""The gateway: HTTP API and WebSocket endpoint. It calls the service layer, never the stores."""
