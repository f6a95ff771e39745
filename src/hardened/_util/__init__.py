"""Small shared helpers, one per idea: atomic writes, progress bars, batching, seeding (the seed
mixer), digests (sha256, tensor and model digests), the model's device, reproducible safetensors
files, input checks."""
