"""Local stand-ins for what Hatchway uses on AWS (the ``local`` extra; never in the layer)."""
