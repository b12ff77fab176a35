"""The run queue's dead-letter queue: each run there is ended with a gap and its final status."""

from hatchway import dead_letters

handler = dead_letters.handler()
