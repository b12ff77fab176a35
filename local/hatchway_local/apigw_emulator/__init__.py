"""A local API Gateway: WebSocket and HTTP APIs from a SAM template, running its Lambda handlers."""
