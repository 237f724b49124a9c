"""Helpers for CPU tests: a tiny Llama config (no profiles needed) and a sized stand-in for a tensor."""


def tiny_config(layers: int = 2, hidden: int = 64, vocab: int = 256):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    return cfg


class SizedTensor:
    """What the harness asks of a parameter or weight tensor when it counts bytes: ``n`` elements of
    ``size`` bytes (numel, element_size)."""

    def __init__(self, n: int, size: int = 2):
        self.n, self.size = n, size

    def numel(self) -> int:
        return self.n

    def element_size(self) -> int:
        return self.size
