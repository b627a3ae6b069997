"""bisllm engine workers. Imports nothing from `bisllm`: they talk to the router only over the wire."""
