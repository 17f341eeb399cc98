"""The remote service and nothing app-specific: the client, connections, webhooks, lost tasks."""
