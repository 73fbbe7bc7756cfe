"""llama-rewire: run GGUF models with their FFN activation functions rewired, per layer."""
