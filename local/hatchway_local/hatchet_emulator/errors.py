"""The one error the emulated engine raises: the servicers turn it into a gRPC status."""

from __future__ import annotations


class EngineError(Exception):
    """A request the engine refuses; ``code`` names the gRPC status to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
