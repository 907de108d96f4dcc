"""Training: the one loop (:mod:`.loop`), its checkpoints (:mod:`.checkpoints`) and each method's
objective (:mod:`.objectives`). A method brings an objective and a batch function; nothing else
about training differs between methods."""
