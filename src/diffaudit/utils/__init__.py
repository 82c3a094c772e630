"""Small shared helpers: atomic writes, lineage (git commit, file hashes), seeding."""
