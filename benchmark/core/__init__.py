"""The core library: registries, typed options, errors, hashing, atomic writes, paths, devices,
provenance, metrics and training; with data/ and models/ the bottom layer (imports no other part)."""
