"""llmkit: the LLM engineer's toolkit."""
__version__ = "0.1.0"
