"""Cases as plain data (sizes, options, mask kinds and an integer seed; tensors come from the seed): the case
types, each answering what the runners ask of it (its options, a copy with other options, its unmasked form,
its sizes), the hypothesis strategies that draw them, and the edge cases every level always runs."""
