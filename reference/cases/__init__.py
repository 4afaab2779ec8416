"""Cases as plain data (sizes, options, mask kinds and an integer seed; tensors come from the seed): the case
types, the hypothesis strategies that draw them, the edge cases every level always runs, and a drawn case as a
user's module is checked on it."""
