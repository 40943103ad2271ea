"""LLMscope's public wire contract: versioned event schemas, subject names and the codec."""
