"""Hatchway: stream Hatchet workflow runs to WebSocket clients, resumable and lossless."""
