"""The MoE model, its canonical named state, the byte-level data and the inner trainer.

The round protocol builds on: `MoEConfig` / `preset`, `MoETransformer`, `flat_state` /
`load_flat_state` / `state_hash`, `set_trainable` / `MaskedAdamW`, `Corpus.shard`, `Trainer`.
"""
