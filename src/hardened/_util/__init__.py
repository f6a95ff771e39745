"""Small shared helpers, one per idea: atomic writes, progress bars, batching, seeding (the seed
mixer), digests (sha256, tensor and model digests), the model's device, reproducible safetensors
files, input checks, typed reads of JSON records from disk (``records``), size checks on the meta
device before allocating (``meta``), and output-folder locks (``lock.lock_output_dir``)."""
