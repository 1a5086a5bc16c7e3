"""Backends turn exact prompt token ids into generated token ids (local transformers, OpenAI server)."""
