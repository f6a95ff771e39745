"""Small shared helpers: atomic writes, progress bars, batching, seeding, input checks."""
