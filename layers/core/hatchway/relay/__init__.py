"""The relay: Hatchet run events to sequenced, logged frames to WebSocket subscribers."""
