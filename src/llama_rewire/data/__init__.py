"""Data files shipped with llama-rewire (see README.md here)."""
