"""Inference shared by every method: a case preprocessed for a model (:mod:`.cases`), a function run over its
brain slices or volume in batches and taken back to the input's grid (:mod:`.volume`), masks and small
components (:mod:`.masks`), fusion of sampled masks (:mod:`.fusion`), and the one prediction type
(:mod:`.prediction`)."""
