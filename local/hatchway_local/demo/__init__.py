"""Demo workflows that the local stack runs in a real hatchet-sdk worker."""
