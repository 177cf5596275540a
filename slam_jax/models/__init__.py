"""Models: the Qwen2 decoder (Flax NNX), its configs, on-disk layout and the SpeechLM handle."""
