"""Hatchway's local tooling: the emulators, the local stack, the demo workflows and the
``hatchway`` command. Never shipped in a Lambda layer or the relay image."""
